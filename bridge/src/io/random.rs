//! Random bytes from the kernel's CSPRNG.

use std::io;

/// Fills `buf` with random bytes from `getrandom(2)` (blocking only until the
/// kernel's pool is initialised at boot), retrying on `EINTR` and short reads.
pub(crate) fn fill(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, writable region of `rest.len()` bytes for
        // the duration of the call; getrandom writes at most that many bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        // n >= 0 here and at most rest.len().
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_whole_buffer() {
        // 4 KiB of zeros from a working CSPRNG has probability 2^-32768.
        let mut buf = vec![0u8; 4096];
        fill(&mut buf).unwrap();
        assert!(buf.iter().any(|&b| b != 0));
        let mut empty = [];
        fill(&mut empty).unwrap();
    }
}
