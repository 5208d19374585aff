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

/// What is typed until Enter, with the line editing a terminal gives in
/// canonical mode done here: backspace, Ctrl-U (erase all), Ctrl-C
/// (cancel), Ctrl-D (end; cancel on an empty line).
fn read_typed(source: &mut impl Read, max: usize) -> Result<SecretBytes, String> {
    let mut out = SecretBytes::with_capacity(max + 1)?;
    let mut byte = [0u8; 1];
    let result = loop {
        match source.read(&mut byte) {
            Ok(0) => break Ok(()),
            Ok(_) => match byte[0] {
                b'\n' | b'\r' => break Ok(()),
                0x03 => break Err("cancelled (Ctrl-C)".to_string()),
                0x04 if out.is_empty() => break Err("cancelled (Ctrl-D)".to_string()),
                0x04 => break Ok(()),
                0x7f | 0x08 => out.truncate(out.len().saturating_sub(1)),
                0x15 => out.truncate(0),
                _ => {
                    if !out.push(&byte) || out.len() > max {
                        break Err(format!("longer than {max} bytes"));
                    }
                }
            },
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
    let read = read_typed(&mut tty, max);
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
        let pin = read_typed(&mut &b"12x\x7f34\x15123456\r"[..], 64).unwrap();
        assert_eq!(&pin[..], b"123456");
        assert!(read_typed(&mut &b"12\x03"[..], 64)
            .unwrap_err()
            .contains("Ctrl-C"));
        assert!(read_typed(&mut &b"\x04"[..], 64).is_err());
        assert_eq!(&read_typed(&mut &b"ab\x04"[..], 64).unwrap()[..], b"ab");
    }
}
