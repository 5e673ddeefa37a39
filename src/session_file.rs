//! Session files: a conversation with its settings and KV cache, versioned and checksummed, for
//! `/save`, `/load` and `--session FILE`. Written atomically (temp file + rename), so an
//! interrupted save never loses the previous file; parsed with every field checked, so a damaged
//! file or one from another model is an error that leaves the session (and the file) untouched.
//! Reading the file (only regular files, of a bounded size) is the front end's job.
//!
//! Layout: magic "FERRITE-SESSION\0", u32 version, u32 header length, header (JSON), u64 KV
//! length, KV state (`KvCache::write_state`), u32 CRC-32 of everything before it.

use crate::chat::Message;
use crate::error::BadInput;
use crate::gguf::GgufFile;
use crate::session::Session;
use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 16] = b"FERRITE-SESSION\0";
pub const VERSION: u32 = 1;
/// Largest header accepted (the transcript is in it).
const MAX_HEADER: u32 = 256 << 20;

/// What identifies the model a session was made with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModelId {
    pub architecture: String,
    pub n_layer: u32,
    pub n_embd: u32,
    pub n_vocab: u32,
    pub file_size: u64,
    /// CRC-32 of the file's metadata and tensor directory.
    pub header_crc: u32,
}

impl ModelId {
    pub fn of(file: &GgufFile, arch: &str, n_layer: u32, n_embd: u32, n_vocab: u32) -> ModelId {
        let map = file.bytes();
        let bytes: &[u8] = (*map).as_ref();
        let header = &bytes[..(file.data_offset as usize).min(bytes.len())];
        ModelId { architecture: arch.into(), n_layer, n_embd, n_vocab, file_size: file.file_size(), header_crc: crc32(header) }
    }
}

/// Sampling and generation settings kept with a session.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub temp: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub typical_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: i32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
    pub n_predict: i32,
    pub n_ctx: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredMessage {
    role: String,
    content: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Header {
    model: ModelId,
    settings: Settings,
    template: Option<String>,
    system: Option<String>,
    messages: Vec<StoredMessage>,
    tokens: Vec<u32>,
}

/// The contents of a session file.
#[derive(Clone, Debug)]
pub struct SessionData {
    pub model: ModelId,
    pub settings: Settings,
    /// The template's name (informational).
    pub template: Option<String>,
    pub system: Option<String>,
    pub messages: Vec<Message>,
    pub tokens: Vec<u32>,
    pub kv: Vec<u8>,
}

impl SessionData {
    /// Takes a session's state.
    pub fn capture(sess: &Session, model: ModelId, settings: Settings) -> Result<SessionData> {
        let (tokens, kv) = sess.cache_state()?;
        Ok(SessionData {
            model,
            settings,
            template: sess.template.as_ref().map(|t| t.name()),
            system: sess.system.clone(),
            messages: sess.messages.clone(),
            tokens,
            kv,
        })
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let header = Header {
            model: self.model.clone(),
            settings: self.settings.clone(),
            template: self.template.clone(),
            system: self.system.clone(),
            messages: self.messages.iter().map(|m| StoredMessage { role: m.role.clone(), content: m.content.clone() }).collect(),
            tokens: self.tokens.clone(),
        };
        let h = serde_json::to_vec(&header)?;
        let mut out = Vec::with_capacity(h.len() + self.kv.len() + 40);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(h.len() as u32).to_le_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.kv);
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Parses and checks a session file's bytes (`name` is used in messages).
    pub fn from_bytes(name: &Path, b: &[u8]) -> Result<SessionData> {
        let bad = |msg: &str| anyhow::Error::new(BadInput(format!("{}: {msg}", name.display())));
        if b.len() < MAGIC.len() + 4 + 4 + 8 + 4 || &b[..16] != MAGIC {
            return Err(bad("not a ferrite session file"));
        }
        let body = &b[..b.len() - 4];
        let crc = u32::from_le_bytes(b[b.len() - 4..].try_into().expect("4 bytes"));
        let version = u32::from_le_bytes(b[16..20].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(bad(&format!("session file version {version} is not supported (this ferrite writes {VERSION})")));
        }
        if crc32(body) != crc {
            return Err(bad("damaged session file (checksum mismatch)"));
        }
        let hlen = u32::from_le_bytes(b[20..24].try_into().expect("4 bytes"));
        if hlen > MAX_HEADER || 24 + hlen as usize + 8 > body.len() {
            return Err(bad("damaged session file (header length)"));
        }
        let h_end = 24 + hlen as usize;
        let header: Header = serde_json::from_slice(&b[24..h_end]).map_err(|e| bad(&format!("damaged session header: {e}")))?;
        let kvlen = u64::from_le_bytes(b[h_end..h_end + 8].try_into().expect("8 bytes"));
        if kvlen != (body.len() - h_end - 8) as u64 {
            return Err(bad("damaged session file (KV length)"));
        }
        let kv = b[h_end + 8..body.len()].to_vec();
        Ok(SessionData {
            model: header.model,
            settings: header.settings,
            template: header.template,
            system: header.system,
            messages: header.messages.into_iter().map(|m| Message::new(m.role, m.content)).collect(),
            tokens: header.tokens,
            kv,
        })
    }

    /// Writes atomically: a temporary file next to `path`, synced, then renamed over it.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().ok_or_else(|| anyhow::Error::new(BadInput(format!("{}: not a file name", path.display()))))?;
        let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            // the rename itself is durable once the directory is synced (best effort: some
            // filesystems refuse to sync a directory)
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        };
        write()
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                anyhow::Error::new(e)
            })
            .with_context(|| format!("saving the session to {}", path.display()))
    }

    /// Restores the conversation and cache into `sess` (the model must match). A KV state that
    /// this context cannot take (saved with another `-c`, cache type or flash-attention setting;
    /// in a file whose checksum holds, that is what a refusal means) is not an error: the
    /// conversation is the truth, so the cache is emptied and the next turn prefills the whole
    /// conversation from its messages (`Restored::Recompute`, with the reason).
    pub fn restore(&self, sess: &mut Session, model: &ModelId) -> Result<Restored> {
        if self.model != *model {
            crate::bail_input!(
                "the session was saved with another model ({} {} layers, {} bytes)",
                self.model.architecture,
                self.model.n_layer,
                self.model.file_size
            );
        }
        let how = match sess.restore_cache(self.tokens.clone(), &self.kv) {
            Ok(()) => Restored::Cache,
            Err(e) if e.downcast_ref::<BadInput>().is_some() => {
                sess.clear();
                Restored::Recompute(crate::error::one_line(&e))
            }
            Err(e) => return Err(e),
        };
        sess.system = self.system.clone();
        sess.messages = self.messages.clone();
        Ok(how)
    }
}

/// How a session file's state came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Restored {
    /// The KV cache as saved: the next turn prefills only its new tokens.
    Cache,
    /// The conversation only (why the KV state could not be used): the next turn prefills it all.
    Recompute(String),
}

/// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`).
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in data {
        c = t[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    fn sample() -> SessionData {
        SessionData {
            model: ModelId { architecture: "llama".into(), n_layer: 2, n_embd: 8, n_vocab: 10, file_size: 99, header_crc: 7 },
            settings: Settings::default(),
            template: Some("chatml".into()),
            system: Some("be brief".into()),
            messages: vec![Message::user("hi"), Message::assistant("hello")],
            tokens: vec![1, 2, 3],
            kv: vec![9; 40],
        }
    }

    #[test]
    fn round_trip_and_damage_detection() {
        let d = sample();
        let b = d.to_bytes().unwrap();
        let back = SessionData::from_bytes(Path::new("s"), &b).unwrap();
        assert_eq!(back.messages, d.messages);
        assert_eq!(back.tokens, d.tokens);
        assert_eq!(back.kv, d.kv);
        for i in [0, 17, 30, b.len() / 2, b.len() - 1] {
            let mut bad = b.clone();
            bad[i] ^= 0x40;
            let e = SessionData::from_bytes(Path::new("s"), &bad).unwrap_err();
            assert!(e.downcast_ref::<BadInput>().is_some());
        }
        for n in [0, 10, 30, b.len() - 1] {
            assert!(SessionData::from_bytes(Path::new("s"), &b[..n]).is_err());
        }
    }
}
