//! `--session FILE`, `/save` and `/load`: the glue between a live session and a session file —
//! checking the path before the model is loaded (a special file, a read-only file or a directory
//! that cannot take the file is refused before any work), the size cap on reading, the advisory
//! lock that keeps two processes from losing each other's turns, and re-prefilling a
//! conversation whose KV state was saved for another context layout.

use super::common::Loaded;
use super::files;
use anyhow::Result;
use ferrite::session::Session;
use ferrite::session_file::{ModelId, Restored, SessionData, Settings};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a process waits for a session file that another ferrite holds. A turn usually takes
/// longer, so the second process then fails (exit 1: the command is right, the file is busy).
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

pub fn model_id(l: &Loaded) -> ModelId {
    let hp = &l.model.hparams;
    ModelId::of(&l.model.file, l.model.arch.name(), hp.n_layer, hp.n_embd, hp.n_vocab)
}

pub fn settings(sess: &Session) -> Settings {
    let c = sess.sampler.config();
    Settings {
        temp: c.temp,
        top_k: c.top_k,
        top_p: c.top_p,
        min_p: c.min_p,
        typical_p: c.typical_p,
        repeat_penalty: c.repeat_penalty,
        repeat_last_n: c.repeat_last_n,
        presence_penalty: c.presence_penalty,
        frequency_penalty: c.frequency_penalty,
        seed: c.seed,
        n_predict: sess.opts.n_predict,
        n_ctx: sess.n_ctx() as u32,
    }
}

/// The largest session file this model can have written at a context of this size or its
/// training context (whichever is larger): the KV state at the widest cache type (f32) with
/// each cell's bookkeeping, plus the transcript (token ids as JSON, about 11 bytes each, and the
/// messages' text, bounded like prompts at 16 bytes a token, twice for JSON escapes) and 1 MiB
/// for the rest of the header. Anything larger is not a session file of this model.
pub fn size_cap(sess: &Session) -> u64 {
    let hp = &sess.dec.model.hparams;
    let n_ctx = (sess.n_ctx() as u64).max(hp.n_ctx_train as u64);
    let kv_per_token = hp.n_layer as u64 * (hp.n_embd_k_gqa() as u64 + hp.n_embd_v_gqa() as u64) * 4 + 16;
    let transcript_per_token = 11 + 2 * files::PROMPT_BYTES_PER_TOKEN;
    n_ctx * (kv_per_token + transcript_per_token) + (1 << 20)
}

/// The directory a session file lives in ("." for a bare name).
fn dir_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Checks a session path before anything is loaded: an existing path must be a regular file
/// (never opened otherwise: a FIFO would block, `/dev/zero` never ends); with `write`, the file
/// must be replaceable. "Read-only" means the file's permission bits grant no write: root
/// bypasses those bits when writing, but they state the owner's intent, so they are honoured for
/// every user; a file or directory the system refuses (another user's, an immutable one, a
/// read-only mount) is found by opening the file for appending (nothing is written, its mtime
/// stays) and creating a probe file in the directory.
pub fn preflight(path: &Path, write: bool) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(_) => {
            let md = files::check_regular(path, u64::MAX, "session file", "")?;
            if write {
                if md.permissions().readonly() {
                    ferrite::bail_input!(
                        "{}: the session file is read-only; not replacing it (make it writable or give another file)",
                        path.display()
                    );
                }
                if let Err(e) = OpenOptions::new().append(true).open(path) {
                    ferrite::bail_input!("{}: the session file cannot be written: {}", path.display(), files::io_message(&e));
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => ferrite::bail_input!("{}: {}", path.display(), files::io_message(&e)),
    }
    if write {
        writable_dir(path)?;
    }
    Ok(())
}

/// Whether a new file can be created next to `path` (where the atomic save writes its temporary).
fn writable_dir(path: &Path) -> Result<()> {
    let dir = dir_of(path);
    let cannot = |why: String| ferrite::bad_input!("cannot save the session to {}: {why}", path.display());
    match std::fs::metadata(dir) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => return Err(cannot(format!("{} is not a directory", dir.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(cannot(format!("directory {} does not exist", dir.display()))),
        Err(e) => return Err(cannot(format!("{}: {}", dir.display(), files::io_message(&e)))),
    }
    let name = path.file_name().ok_or_else(|| cannot("not a file name".into()))?;
    let probe = dir.join(format!(".{}.probe{}", name.to_string_lossy(), std::process::id()));
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(cannot(format!("directory {} is not writable ({})", dir.display(), files::io_message(&e)))),
    }
}

/// An advisory lock on a session file, held until dropped (or the process ends, however it ends).
/// It lives on a companion file `.NAME.lock` beside the session file, never removed: the session
/// file itself is replaced by a rename on every save, so a lock on it would be on a file that no
/// longer has the name by the time the next process looks.
pub struct Lock {
    _file: File,
    pub lock_path: PathBuf,
}

/// The companion lock file of a session path (directory canonicalized, so two spellings of one
/// file share one lock).
pub fn lock_path(path: &Path) -> Result<PathBuf> {
    let dir = dir_of(path);
    let dir = dir.canonicalize().map_err(|e| ferrite::bad_input!("{}: {}", dir.display(), files::io_message(&e)))?;
    let name = path.file_name().ok_or_else(|| ferrite::bad_input!("{}: not a file name", path.display()))?;
    Ok(dir.join(format!(".{}.lock", name.to_string_lossy())))
}

/// Takes the lock of `path`, polling for up to `wait` while another process holds it; then a
/// runtime error (exit 1) naming the file. Ctrl-C while waiting is an interruption.
pub fn lock(path: &Path, wait: Duration) -> Result<Lock> {
    let lock_path = lock_path(path)?;
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_path).map_err(|e| {
        ferrite::bad_input!("cannot lock the session file {}: {}: {}", path.display(), lock_path.display(), files::io_message(&e))
    })?;
    let t0 = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Lock { _file: file, lock_path }),
            Err(std::fs::TryLockError::WouldBlock) => {
                if super::common::interrupted() {
                    return Err(anyhow::Error::new(ferrite::error::Interrupted));
                }
                if t0.elapsed() >= wait {
                    anyhow::bail!(
                        "{}: the session is in use by another ferrite process (waited {} s); try again when it has finished",
                        path.display(),
                        wait.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                anyhow::bail!("cannot lock the session file {}: {}", path.display(), files::io_message(&e))
            }
        }
    }
}

/// Reads a session file for `sess` (a regular file, at most `size_cap` bytes).
pub fn read(path: &Path, sess: &Session) -> Result<SessionData> {
    let hint = "what this model's context can hold; raise -c for a session saved with a larger one";
    let bytes = files::read_capped(path, size_cap(sess), "session file", hint)?;
    SessionData::from_bytes(path, &bytes)
}

/// Restores `data` into `sess`; when its KV state cannot be used here (saved with another `-c`,
/// cache type or flash-attention setting), returns the notice saying the conversation will be
/// prefilled again from its messages on the next turn.
pub fn restore(data: &SessionData, sess: &mut Session, l: &Loaded) -> Result<Option<String>> {
    Ok(match data.restore(sess, &model_id(l))? {
        Restored::Cache => None,
        Restored::Recompute(why) => {
            Some(format!("{why}; the conversation ({} messages) is computed again from its text on the next turn", sess.messages.len()))
        }
    })
}

/// Restores `path` into `sess` if it exists (a new file is created by `save`). The command
/// line's --system wins over the file's. Notices go to stderr unless `quiet`.
pub fn load_into(path: &Path, sess: &mut Session, l: &Loaded, quiet: bool) -> Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let data = read(path, sess)?;
    let system = sess.system.clone();
    let notice = restore(&data, sess, l)?;
    if system.is_some() {
        sess.system = system;
    }
    if let (Some(n), false) = (notice, quiet) {
        stderrln!("ferrite: {n}");
    }
    Ok(true)
}

/// Saves `sess` to `path` atomically, after the checks of `preflight`; the lock is taken for the
/// write unless this process already holds it (`held`).
pub fn save(path: &Path, sess: &Session, held: Option<&Lock>) -> Result<()> {
    preflight(path, true)?;
    let mine = held.is_some_and(|h| lock_path(path).is_ok_and(|p| p == h.lock_path));
    let _lock = if mine { None } else { Some(lock(path, LOCK_WAIT)?) };
    let l_model = &sess.dec.model;
    let hp = &l_model.hparams;
    let id = ModelId::of(&l_model.file, l_model.arch.name(), hp.n_layer, hp.n_embd, hp.n_vocab);
    SessionData::capture(sess, id, settings(sess))?.write(path)
}
