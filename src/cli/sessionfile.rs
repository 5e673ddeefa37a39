//! `--session FILE`, `/save` and `/load`: the glue between a live session and a session file.

use super::common::Loaded;
use anyhow::Result;
use ferrite::session::Session;
use ferrite::session_file::{ModelId, SessionData, Settings};
use std::path::Path;

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

/// Restores `path` into `sess` if it exists (a new file is created by `save`). The command
/// line's --system wins over the file's.
pub fn load_into(path: &Path, sess: &mut Session, l: &Loaded) -> Result<bool> {
    if !path.exists() {
        return Ok(false);
    }
    let data = SessionData::read(path)?;
    let system = sess.system.clone();
    data.restore(sess, &model_id(l))?;
    if system.is_some() {
        sess.system = system;
    }
    Ok(true)
}

pub fn save(path: &Path, sess: &Session) -> Result<()> {
    let l_model = &sess.dec.model;
    let hp = &l_model.hparams;
    let id = ModelId::of(&l_model.file, l_model.arch.name(), hp.n_layer, hp.n_embd, hp.n_vocab);
    SessionData::capture(sess, id, settings(sess))?.write(path)
}
