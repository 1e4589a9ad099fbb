//! CPU profiles in pprof's protobuf format: sampling this process
//! (`sample`), merging the profiles of several processes into one
//! (`merge`), and the exchange through which a master has its worker
//! processes sample themselves (`relay`). The admin API serves the result
//! at `/debug/pprof/profile` (docs/admin.md).

pub mod merge;
pub mod relay;
pub mod sample;

use std::fmt;
use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression;
use pprof::protos::Message;
pub use pprof::protos::Profile;

/// Why a profile could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileError {
    /// A profile is already being taken in that process (the profiler is
    /// process-wide).
    Busy,
    Failed(String),
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileError::Busy => {
                f.write_str("a CPU profile is already being taken; retry when it ends")
            }
            ProfileError::Failed(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ProfileError {}

/// The protobuf, gzip-compressed as Go's net/http/pprof serves it.
pub fn gzip(profile: &Profile) -> Result<Vec<u8>, ProfileError> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode_to_vec())
        .and_then(|()| gz.finish())
        .map_err(|e| ProfileError::Failed(format!("compressing the CPU profile failed: {e}")))
}
