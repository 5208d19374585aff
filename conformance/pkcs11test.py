#!/usr/bin/env python3
"""Reads two google/pkcs11test runs (gtest output): against p11derive and
against SoftHSM alone. Writes the REPORT.md section (counts for both, every
test failing on p11derive but not on SoftHSM with its first failure) and the
checks conformance/run.sh counts, one a line: VERDICT<TAB>CHECK<TAB>DETAIL.

A test that fails because it needs RSA, DES (or 3DES) or MD5, which p11derive
leaves out on purpose, is named with what it needs and is not a failure of
the run; any other test failing on p11derive only is a FAIL check. What each
test needs was read from pkcs11test's source (snapshot 2cbe462), not guessed
from how it failed; the table below says where.

usage: pkcs11test.py P11DERIVE_OUT SOFTHSM_OUT SECTION_MD CHECKS_TSV [SOURCE_TARBALL]
"""

import re
import sys
import tarfile

# Tests that need an algorithm p11derive lacks on purpose, whatever their
# parameter: test name (suite without its instantiation prefix, test without
# its parameter index) -> (what it needs, where the source says so).
FIXED = {
    "KeyPairTest.EncryptDecrypt": ("RSA", "keypair.cc: the KeyPairTest fixture generates an RSA pair (KeyPair, CKM_RSA_PKCS_KEY_PAIR_GEN in pkcs11test.h) and encrypts with CKM_RSA_PKCS"),
    "ReadWriteSessionTest.PublicExponent4Bytes": ("RSA", "keypair.cc: C_GenerateKeyPair with CKM_RSA_PKCS_KEY_PAIR_GEN"),
    "ReadWriteSessionTest.ExtractKeys": ("RSA", "keypair.cc: an RSA KeyPair"),
    "ReadWriteSessionTest.AsymmetricTokenKeyPair": ("RSA", "keypair.cc: CKM_RSA_PKCS_KEY_PAIR_GEN, expecting CKR_TEMPLATE_INCONSISTENT from it"),
    "ReadOnlySessionTest.CreateKeyPairObjects": ("RSA", "keypair.cc: C_CreateObject of CKK_RSA public and private keys"),
    "ReadOnlySessionTest.SignVerifyRecover": ("RSA", "sign.cc: an RSA KeyPair, C_SignRecover with CKM_RSA_PKCS"),
    "SignTest.SignVerify": ("RSA", "sign.cc: the SignTest fixture holds an RSA KeyPair; every parameter is an RSA mechanism"),
    "SignTest.SignFailVerifyWrong": ("RSA", "sign.cc: as SignTest.SignVerify"),
    "SignTest.SignFailVerifyShort": ("RSA", "sign.cc: as SignTest.SignVerify"),
    "RWEitherSessionTest.TookanAttackA2": ("RSA, DES", "tookan.cc: a DES3 SecretKey (the default CKM_DES3_KEY_GEN of pkcs11test.h) wrapped under an RSA KeyPair with CKM_RSA_PKCS"),
    "ReadWriteSessionTest.FindObjectSubset": ("RSA, DES", "object.cc: two CKM_DES_KEY_GEN keys and two RSA KeyPairs beside an AES key"),
    "ReadWriteSessionTest.SetLatchingAttribute": ("DES", "object.cc: a SecretKey with the default CKM_DES3_KEY_GEN"),
    "ReadWriteSessionTest.TookanAttackA1": ("DES", "tookan.cc: a DES3 SecretKey wrapped with the -w cipher (default 3DES-ECB)"),
    "ReadWriteSessionTest.TookanAttackA3": ("DES", "tookan.cc: a SecretKey with the default CKM_DES3_KEY_GEN"),
    "ReadWriteSessionTest.TookanAttackA4": ("DES", "tookan.cc: a SecretKey with the default CKM_DES3_KEY_GEN"),
    "ReadWriteSessionTest.TookanAttackA5a": ("DES", "tookan.cc: a SecretKey with the default CKM_DES3_KEY_GEN"),
    "ReadWriteSessionTest.TookanAttackA5b": ("DES", "tookan.cc: a SecretKey with the default CKM_DES3_KEY_GEN"),
    "ROUserSessionTest.WrapUnwrap": ("DES", "key.cc: a DES3 SecretKey wrapped with the -w cipher (default 3DES-ECB), unwrapped as CKK_DES3"),
    "ROUserSessionTest.WrapInvalid": ("DES", "key.cc: a DES3 SecretKey and a 3DES-ECB wrapping key"),
    "ROUserSessionTest.UnwrapInvalid": ("DES", "key.cc: a DES3 SecretKey and a 3DES-ECB wrapping key; unwraps as CKK_DES"),
    "ReadOnlySessionTest.CreateSecretKeyAttributes": ("DES", "cipher.cc: C_CreateObject of a CKK_DES key"),
    "ReadOnlySessionTest.SecretKeyTestVectors": ("DES", "cipher.cc: imports CKK_DES3 and CKK_DES keys for its DES-ECB and 3DES-ECB vectors"),
    "ReadWriteSessionTest.GetSetOperationState": ("DES", "session.cc: a DES3 SecretKey under CKM_DES_ECB"),
    "DigestTest.DigestKey": ("DES", "digest.cc: digests a CKM_DES_KEY_GEN key"),
    "DigestTest.DigestKeyInvalid": ("DES", "digest.cc: a CKM_DES_KEY_GEN key"),
}

# Parameterized tests whose parameter names the algorithm (SecretKeyTest and
# DualSecretKeyTest take a cipher, HmacTest an HMAC, DigestTest a digest).
def param_needs(param):
    if param.startswith(("DES-", "3DES-")):
        return "DES", f"the parameter {param} (pkcs11test's kCipherInfo: CKM_DES_KEY_GEN / CKM_DES3_KEY_GEN)"
    if param.startswith("MD5"):
        return "MD5", f"the parameter {param} (CKM_MD5 / CKM_MD5_HMAC)"
    if "RSA" in param:
        return "RSA", f"the parameter {param} (an RSA mechanism)"
    return None


def needs(name, param):
    """What the test needs that p11derive lacks on purpose, and where the
    source shows it; None when it needs nothing of the kind."""
    suite, _, test = name.partition(".")
    key = suite.split("/")[-1] + "." + test.split("/")[0]
    found = []
    if key in FIXED:
        found.append(FIXED[key])
    if param:
        p = param_needs(param)
        if p:
            found.append(p)
    if not found:
        return None
    kinds = sorted({k.strip() for what, _ in found for k in what.split(",")})
    return ", ".join(kinds), "; ".join(where for _, where in found)


class Run:
    def __init__(self, path):
        self.results = {}  # name -> "OK" | "FAILED"
        self.params = {}
        self.blocks = {}   # name -> the lines printed while it ran
        self.skipped = {}  # name -> pkcs11test's reason (gtest reports them as OK)
        self.completed = False
        self.crashed_in = None
        current = None
        reason = None
        for line in open(path, errors="replace"):
            line = line.rstrip("\n")
            m = re.match(r"\[ RUN      \] (\S+)", line)
            if m:
                current = m.group(1)
                self.blocks[current] = []
                continue
            m = re.match(r"\[       OK \] (\S+)", line)
            if m and current:
                self.results[m.group(1)] = "OK"
                current = None
                continue
            m = re.match(r'\[  FAILED  \] (\S+?)(?:, where GetParam\(\) = "([^"]*)")? \(\d+ ms\)$', line)
            if m and current:
                self.results[m.group(1)] = "FAILED"
                if m.group(2) is not None:
                    self.params[m.group(1)] = m.group(2)
                current = None
                continue
            if re.match(r"\[==========\] \d+ tests? from .* ran\.", line):
                self.completed = True
            m = re.match(r"Following tests were skipped because: (.*)", line)
            if m:
                reason = m.group(1)
                continue
            if reason and line.startswith("  ") and not line.startswith("   "):
                self.skipped[line.strip()] = reason
                continue
            reason = None
            if current:
                self.blocks[current].append(line)
        if current and not self.completed:
            self.crashed_in = current

    def failed(self):
        return [n for n, r in self.results.items() if r == "FAILED"]

    def counts(self):
        ok = [n for n, r in self.results.items() if r == "OK"]
        skipped = [n for n in ok if n in self.skipped]
        return len(self.results), len(ok) - len(skipped), len(skipped), len(self.failed())


SOURCE = {}


def source_line(ref):
    """The source line FILE:LINE points at, from the snapshot's tarball."""
    file, _, line = ref.partition(":")
    lines = SOURCE.get(file)
    if lines is None or not line.isdigit():
        return None, []
    return int(line), lines


def call_before(ref):
    """For a failure on a plain `rv`, the PKCS#11 call that set it."""
    n, lines = source_line(ref)
    if not lines:
        return None
    for i in range(n - 1, max(0, n - 15), -1):
        m = re.search(r"rv = g_fns->(C_\w+)", lines[i - 1])
        if m:
            return m.group(1)
    return None


def first_failure(block):
    """(location, call, got, expected) of the first failed assertion."""
    for i, line in enumerate(block):
        m = re.match(r"(\S+:\d+): Failure", line)
        if not m:
            continue
        where = m.group(1)
        rest = block[i + 1:i + 8]
        text = "\n".join(rest)
        which = re.findall(r"Which is: (CKR_\w+)", text)
        calls = re.findall(r"g_fns->(C_\w+)", text)
        call = calls[0] if calls else call_before(where)
        if len(which) >= 2:
            return where, call, which[1], which[0]
        detail = " ".join(l.strip() for l in rest[:3] if l.strip())
        return where, call, None, detail
    return None, None, None, "no failure message (a failure in the fixture's teardown?)"


def family(call):
    if not call:
        return "other"
    for prefix, what in [
        (("C_CreateObject", "C_CopyObject", "C_DestroyObject", "C_GetAttributeValue",
          "C_SetAttributeValue", "C_FindObjects", "C_GetObjectSize"), "objects"),
        (("C_Encrypt", "C_Decrypt"), "encryption"),
        (("C_Sign", "C_Verify"), "signatures and MACs"),
        (("C_Digest",), "digests"),
        (("C_GenerateKey", "C_DeriveKey", "C_WrapKey", "C_UnwrapKey"), "key management"),
        (("C_Login", "C_Logout", "C_InitPIN", "C_SetPIN"), "login"),
        (("C_OpenSession", "C_CloseSession", "C_GetSessionInfo", "C_GetOperationState"), "sessions"),
    ]:
        if call.startswith(prefix):
            return what
    return "other"


def reason_of(run, name):
    where, call, got, expected = first_failure(run.blocks.get(name, []))
    if got:
        return f"{where}: {call or '?'} -> {got} (expected {expected})", family(call)
    return f"{where or '?'}: {call + ': ' if call else ''}{expected}", family(call)


def md(text):
    return text.replace("|", "\\|")


def main():
    p11d_path, shsm_path, section_path, checks_path = sys.argv[1:5]
    if len(sys.argv) > 5:
        try:
            with tarfile.open(sys.argv[5]) as t:
                for m in t.getmembers():
                    if m.isfile() and re.match(r"[^/]+/[^/]+\.(cc|h)$", m.name):
                        SOURCE[m.name.split("/")[-1]] = t.extractfile(m).read().decode(errors="replace").split("\n")
        except (OSError, tarfile.TarError):
            pass
    p11d, shsm = Run(p11d_path), Run(shsm_path)
    checks = []
    for who, run in (("p11derive", p11d), ("SoftHSM alone", shsm)):
        total, passed, skipped, failed = run.counts()
        if run.completed:
            checks.append(("PASS", f"the whole suite runs against {who} ({total} tests: {passed} passed, "
                           f"{skipped} skipped by pkcs11test, {failed} failed)", ""))
        else:
            where = f" (crashed in {run.crashed_in})" if run.crashed_in else ""
            checks.append(("FAIL", f"the whole suite runs against {who}{where}", ""))

    only = sorted(n for n in p11d.failed() if shsm.results.get(n) != "FAILED")
    named, failing = {}, []
    rows = []
    for name in only:
        param = p11d.params.get(name)
        shown = name + (f" ({param})" if param else "")
        reason, fam = reason_of(p11d, name)
        need = needs(name, param)
        if need:
            kinds, where = need
            named.setdefault(kinds, []).append(shown)
            rows.append((shown, reason, f"needs {kinds}: {where}"))
        else:
            failing.append((shown, reason, fam))
            rows.append((shown, reason, f"**FAIL** ({fam})"))
    why = {
        "RSA": "RSA is not implemented on purpose (pkcs11test makes its key pairs with CKM_RSA_PKCS_KEY_PAIR_GEN)",
        "DES": "DES and 3DES are not implemented on purpose",
        "MD5": "MD5 is not implemented on purpose (a broken legacy hash: MD5-HMAC, CKM_MD5)",
    }
    for kinds in sorted(named):
        names = named[kinds]
        checks.append(("SKIP", f"{len(names)} tests fail on p11derive only because they need {kinds}",
                       "; ".join(why[k] for k in kinds.split(", ")) + "; named in REPORT.md",
                       ", ".join(names)))
    for shown, reason, fam in failing:
        checks.append(("FAIL", f"{shown} fails on p11derive only: {reason} ({fam})", ""))
    if not failing:
        checks.append(("PASS", "no test fails on p11derive only except those needing RSA, DES or MD5", ""))

    lines = ["## google/pkcs11test in detail", ""]
    lines.append("The whole suite (snapshot 2cbe462, `pkcs11test -m -l -s -u -o`, its default wrap cipher "
                 "3DES-ECB), run against p11derive and against SoftHSM alone on a scratch token of its own. "
                 "Tests that pkcs11test itself skips (an optional function the token lacks, as "
                 "`C_GetOperationState`) pass in gtest's count and are counted apart here.")
    lines.append("")
    lines.append("| | p11derive | SoftHSM alone |")
    lines.append("|---|---|---|")
    c1, c2 = p11d.counts(), shsm.counts()
    for i, label in enumerate(["tests run", "passed", "skipped by pkcs11test", "failed"]):
        lines.append(f"| {label} | {c1[i]} | {c2[i]} |")
    both = sorted(n for n in p11d.failed() if shsm.results.get(n) == "FAILED")
    better = sorted(n for n in shsm.failed() if p11d.results.get(n) == "OK")
    lines.append(f"| failed on both | {len(both)} | {len(both)} |")
    lines.append(f"| failed on this one only | {len(only)} | {len(better)} |")
    if not p11d.completed:
        lines.append(f"\n**The run against p11derive did not complete** (last test: {p11d.crashed_in}).")
    lines.append("")
    lines.append("Every test that fails on p11derive but not on SoftHSM, with its first failure (the call and "
                 "what it returned). \"needs RSA\", \"needs DES\" and \"needs MD5\" are tests that use an "
                 "algorithm p11derive leaves out on purpose (RSA, DES/3DES, and MD5, a broken legacy hash, "
                 "MD5-HMAC included); what each test needs was read from pkcs11test's source "
                 "(conformance/pkcs11test.py says where) and such tests are not failures of the run. Any "
                 "other is a FAIL check.")
    lines.append("")
    if rows:
        lines.append("| test | first failure | classification |")
        lines.append("|---|---|---|")
        for shown, reason, cls in rows:
            lines.append(f"| {md(shown)} | {md(reason)} | {md(cls)} |")
    else:
        lines.append("None.")
    lines.append("")
    if both:
        lines.append(f"Failing on SoftHSM alone as well ({len(both)}): " + ", ".join(both) + ".")
        lines.append("")
    open(section_path, "w").write("\n".join(lines))
    with open(checks_path, "w") as out:
        for c in checks:
            out.write("\t".join((list(c) + ["", ""])[:4]).replace("\n", " ") + "\n")


if __name__ == "__main__":
    main()
