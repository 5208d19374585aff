// Conformance check for Java SunPKCS11 (run by conformance/run.sh): loads the
// provider through a SunPKCS11 config, finds a private key by its keystore
// alias (a certificate with the key's CKA_ID must be on the token), signs
// with SHA256withECDSA through the token, and verifies with the JDK's own
// SunEC provider and the certificate's public key.
//
// Usage: java SignCheck.java CONFIG PIN ALIAS
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.Security;
import java.security.Signature;
import java.security.cert.X509Certificate;

public class SignCheck {
    public static void main(String[] args) throws Exception {
        Provider p11 = Security.getProvider("SunPKCS11").configure(args[0]);
        Security.addProvider(p11);
        KeyStore ks = KeyStore.getInstance("PKCS11", p11);
        ks.load(null, args[1].toCharArray());
        PrivateKey key = (PrivateKey) ks.getKey(args[2], null);
        X509Certificate cert = (X509Certificate) ks.getCertificate(args[2]);
        if (key == null || cert == null) {
            System.out.println("no key or certificate for alias " + args[2]);
            System.exit(1);
        }
        byte[] message = ("p11derive java check " + System.nanoTime()).getBytes(StandardCharsets.UTF_8);
        Signature signer = Signature.getInstance("SHA256withECDSA", p11);
        signer.initSign(key);
        signer.update(message);
        byte[] signature = signer.sign();
        Signature verifier = Signature.getInstance("SHA256withECDSA", "SunEC");
        verifier.initVerify(cert.getPublicKey());
        verifier.update(message);
        boolean ok = verifier.verify(signature);
        message[0] ^= 1;
        verifier.initVerify(cert.getPublicKey());
        verifier.update(message);
        boolean tampered = verifier.verify(signature);
        System.out.println("signed by " + signer.getProvider().getName() + " with " + key.getAlgorithm()
                + " key; SunEC verifies: " + ok + "; changed message verifies: " + tampered);
        System.exit(ok && !tampered ? 0 : 1);
    }
}
