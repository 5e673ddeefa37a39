//! Files written all-or-nothing: data goes to a temporary file beside the target, which is
//! synced and renamed over it only once complete, so an error, a full disk or Ctrl-C never
//! leaves a half-written file under the target's name (nor loses the file it replaces).

use anyhow::Result;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file being written; dropped without [`commit`](Self::commit), it leaves nothing behind.
pub struct AtomicFile {
    file: std::io::BufWriter<std::fs::File>,
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl AtomicFile {
    /// Starts `target` (written as `.NAME.tmp-PID` in its directory until committed).
    pub fn create(target: &Path) -> Result<AtomicFile> {
        let Some(name) = target.file_name() else { crate::bail_input!("{}: not a file name", target.display()) };
        let tmp = target.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
        let f = std::fs::File::create(&tmp).map_err(|e| crate::bad_input!("cannot write {}: {e}", target.display()))?;
        Ok(AtomicFile { file: std::io::BufWriter::with_capacity(1 << 20, f), tmp, target: target.to_path_buf(), committed: false })
    }

    /// Writes `data`; an error removes the temporary file and names the target.
    pub fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let r = self.file.write_all(data);
        r.map_err(|e| self.fail(e))
    }

    fn fail(&mut self, e: std::io::Error) -> anyhow::Error {
        let _ = std::fs::remove_file(&self.tmp);
        anyhow::Error::new(e).context(format!("writing {}", self.target.display()))
    }

    /// Flushes, syncs and renames the file into place (then syncs the directory, best effort:
    /// some filesystems refuse to sync one).
    pub fn commit(mut self) -> Result<()> {
        let r = self.file.flush().and_then(|_| self.file.get_ref().sync_all());
        r.map_err(|e| self.fail(e))?;
        std::fs::rename(&self.tmp, &self.target).map_err(|e| self.fail(e))?;
        self.committed = true;
        let dir = self.target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_committed_file_appears() {
        let dir = std::env::temp_dir().join(format!("ferrite-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.bin");
        std::fs::write(&path, b"old").unwrap();
        {
            let mut f = AtomicFile::create(&path).unwrap();
            f.write_all(b"new, unfinished").unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let mut f = AtomicFile::create(&path).unwrap();
        f.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
