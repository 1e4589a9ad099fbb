//! Reading and writing sysctls as files under the proc root. Values are kept as
//! the exact bytes the kernel gave, so a rollback writes back what was there
//! (tabs in tcp_rmem and the trailing newline included).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::Path;

pub fn read(path: &Path) -> io::Result<String> {
    let bytes = std::fs::read(path)?;
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// One write(2) of the whole value: the kernel parses a sysctl per write call.
pub fn write(path: &Path, value: &[u8]) -> io::Result<()> {
    // No O_CREAT: a missing key must fail as missing, not appear in a fake tree.
    let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
    f.write_all(value)
}

/// The value as apply writes it: fields separated by one space, one newline.
pub fn encode(value: &str) -> String {
    format!(
        "{}\n",
        value.split_whitespace().collect::<Vec<_>>().join(" ")
    )
}
