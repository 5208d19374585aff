//! Reading a secret typed at the terminal (no echo) or piped on a descriptor, into locked memory.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use zeroize::Zeroize;

use super::SecretBytes;

/// Reads bytes from `source` into the arena until a newline, end of input or
/// `max` bytes (more is an error); a trailing `\r\n`/`\n` is dropped. No
/// byte passes through a heap buffer: `source` must be unbuffered.
pub fn read_line_secret(source: &mut impl Read, max: usize) -> Result<SecretBytes, String> {
    let mut out = SecretBytes::with_capacity(max + 1)?;
    let mut byte = [0u8; 1];
    loop {
        match source.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => {
                if !out.push(&byte) || out.len() > max {
                    byte.zeroize();
                    return Err(format!("longer than {max} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    byte.zeroize();
    if out.last() == Some(&b'\r') {
        out.truncate(out.len() - 1);
    }
    Ok(out)
}

/// The terminal's editing keys (its `c_cc`), honoured while echo is off.
#[derive(Clone, Copy)]
struct Keys {
    erase: u8,
    kill: u8,
    intr: u8,
    quit: u8,
    susp: u8,
    eof: u8,
}

impl Keys {
    /// The usual defaults: DEL, Ctrl-U, Ctrl-C, Ctrl-\\, Ctrl-Z, Ctrl-D.
    const DEFAULT: Keys = Keys {
        erase: 0x7f,
        kill: 0x15,
        intr: 0x03,
        quit: 0x1c,
        susp: 0x1a,
        eof: 0x04,
    };
}

/// What is typed until Enter, with the line editing a terminal gives in
/// canonical mode done here: erase (and backspace), kill (erase all),
/// interrupt, quit and suspend (cancel), end of file (end; cancel on an
/// empty line). Other control bytes and escape sequences (arrow keys) are
/// not part of a PIN and are dropped.
fn read_typed(source: &mut impl Read, max: usize, keys: Keys) -> Result<SecretBytes, String> {
    let mut out = SecretBytes::with_capacity(max + 1)?;
    let mut byte = [0u8; 1];
    let mut escape = false;
    let result = loop {
        match source.read(&mut byte) {
            Ok(0) => break Ok(()),
            Ok(_) => {
                let b = byte[0];
                if escape {
                    // An escape sequence ends at its final byte (@ to ~),
                    // after ESC [ or ESC O and their parameters.
                    escape = !(b.is_ascii_alphabetic() || b == b'~') || b == b'O';
                    continue;
                }
                match b {
                    b'\n' | b'\r' => break Ok(()),
                    _ if b == keys.intr || b == keys.quit || b == keys.susp => {
                        break Err("cancelled".to_string())
                    }
                    _ if b == keys.eof && out.is_empty() => break Err("cancelled".to_string()),
                    _ if b == keys.eof => break Ok(()),
                    _ if b == keys.erase || b == 0x7f || b == 0x08 => {
                        out.truncate(out.len().saturating_sub(1))
                    }
                    _ if b == keys.kill => out.truncate(0),
                    0x1b => escape = true,
                    _ if b < 0x20 => {}
                    _ => {
                        if !out.push(&byte) || out.len() > max {
                            break Err(format!("longer than {max} bytes"));
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e.to_string()),
        }
    };
    byte.zeroize();
    result.map(|()| out)
}

/// Asks for a secret on the controlling terminal (`/dev/tty`) with echo
/// turned off, and restores the terminal however the read ends. Errors when
/// the process has no terminal.
pub fn prompt_secret(prompt: &str, max: usize) -> Result<SecretBytes, String> {
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| format!("no terminal to ask on (/dev/tty: {e})"))?;
    let fd = tty.as_raw_fd();
    // SAFETY: a zeroed termios is a valid out-parameter for tcgetattr.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: fd is an open descriptor owned by `tty`; `saved` is writable.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(format!(
            "cannot read the terminal's settings: {}",
            std::io::Error::last_os_error()
        ));
    }
    // Byte at a time, no echo, and no signals: Ctrl-C arrives as a byte and
    // cancels here, so the terminal is always given its echo back.
    let mut quiet = saved;
    quiet.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG);
    quiet.c_cc[libc::VMIN] = 1;
    quiet.c_cc[libc::VTIME] = 0;
    // SAFETY: as above; `quiet` is a valid termios derived from the saved one.
    if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
        return Err(format!(
            "cannot turn off the terminal's echo: {}",
            std::io::Error::last_os_error()
        ));
    }
    let _ = tty.write_all(prompt.as_bytes());
    let _ = tty.flush();
    let cc = |i: usize, default: u8| match saved.c_cc[i] {
        0 => default,
        key => key,
    };
    let d = Keys::DEFAULT;
    let keys = Keys {
        erase: cc(libc::VERASE, d.erase),
        kill: cc(libc::VKILL, d.kill),
        intr: cc(libc::VINTR, d.intr),
        quit: cc(libc::VQUIT, d.quit),
        susp: cc(libc::VSUSP, d.susp),
        eof: cc(libc::VEOF, d.eof),
    };
    let read = read_typed(&mut tty, max, keys);
    // SAFETY: restores the settings read above on the same descriptor.
    unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &saved) };
    let _ = tty.write_all(b"\n");
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_its_newline() {
        let pin = read_line_secret(&mut &b"123456\r\nrest"[..], 64).unwrap();
        assert_eq!(&pin[..], b"123456");
        let pin = read_line_secret(&mut &b"abc"[..], 64).unwrap();
        assert_eq!(&pin[..], b"abc");
        assert!(read_line_secret(&mut &b"toolong"[..], 3)
            .unwrap_err()
            .contains("longer than 3"));
    }

    #[test]
    fn typing_with_corrections_and_cancelling() {
        let typed = |bytes: &[u8]| read_typed(&mut &bytes[..], 64, Keys::DEFAULT);
        let pin = typed(b"12x\x7f34\x15123456\r").unwrap();
        assert_eq!(&pin[..], b"123456");
        for cancel in [&b"12\x03"[..], b"12\x1c", b"12\x1a", b"\x04"] {
            assert!(
                typed(cancel).unwrap_err().contains("cancelled"),
                "{cancel:?}"
            );
        }
        assert_eq!(&typed(b"ab\x04").unwrap()[..], b"ab");
        // Arrow keys and other control bytes are not part of a PIN.
        assert_eq!(
            &typed(b"1\x1b[A2\x1bOB3\x1b[1;5C4\x07\n").unwrap()[..],
            b"1234"
        );
        // The terminal's own erase key (here Ctrl-H's cousin, '#').
        let keys = Keys {
            erase: b'#',
            ..Keys::DEFAULT
        };
        let pin = read_typed(&mut &b"12#3\n"[..], 64, keys).unwrap();
        assert_eq!(&pin[..], b"13");
    }
}
