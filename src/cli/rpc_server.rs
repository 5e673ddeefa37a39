//! `ferrite rpc-server`: serves this machine's CPU (or other devices) to ggml RPC clients, such
//! as llama.cpp's (`--rpc HOST:PORT`): the ggml protocol, ggml's own server.

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on. The protocol has no authentication: anything but a loopback
    /// address lets anyone who can reach it run computations and read memory through it
    #[arg(short = 'H', long = "host", default_value = "127.0.0.1", value_name = "HOST")]
    pub host: String,
    /// Port to listen on
    #[arg(short = 'p', long = "port", default_value_t = 50052, value_name = "PORT")]
    pub port: u16,
    /// Threads of the CPU device (default: the physical cores)
    #[arg(short = 't', long = "threads", value_name = "N")]
    pub threads: Option<usize>,
    /// Devices to serve, by ggml name, comma-separated (default: the CPU); see `ferrite info --devices`
    #[arg(short = 'd', long = "device", value_name = "LIST")]
    pub device: Option<String>,
    /// Keep received tensors in this folder, so a client that sends the same weights again
    /// skips the transfer (llama.cpp's rpc-server -c)
    #[arg(short = 'c', long = "cache", value_name = "DIR")]
    pub cache: Option<std::path::PathBuf>,
    /// Memory of the served CPU reported to clients, in MiB (they split layers by it; default:
    /// the machine's free memory). Not an allocation limit
    #[arg(short = 'm', long = "mem", value_name = "MIB")]
    pub mem: Option<u64>,
}

/// Whether `host` names only this machine.
fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

pub fn main(a: Args) -> Result<()> {
    if !ggml::rpc::available() {
        ferrite::bail_input!("this build has no RPC backend (it is built with GGML_RPC=ON; see README \"Building\")");
    }
    if a.port == 0 {
        ferrite::bail_input!("--port must be 1..=65535");
    }
    if a.mem == Some(0) {
        ferrite::bail_input!("--mem must be at least 1 MiB");
    }
    let devices = match &a.device {
        None => vec![ggml::Device::cpu()?],
        Some(list) => {
            let all = ggml::Device::all();
            let mut out = Vec::new();
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                let Some(d) = all.iter().find(|d| d.name().eq_ignore_ascii_case(name)) else {
                    let names: Vec<String> = all.iter().map(|d| d.name()).collect();
                    ferrite::bail_input!("--device {name}: no such device (here: {})", names.join(", "));
                };
                out.push(*d);
            }
            if out.is_empty() {
                ferrite::bail_input!("--device: name at least one device");
            }
            out
        }
    };
    if let Some(dir) = &a.cache {
        std::fs::create_dir_all(dir).map_err(|e| ferrite::bad_input!("--cache {}: {e}", dir.display()))?;
    }
    if !is_loopback(&a.host) {
        stderrln!(
            "ferrite: WARNING: listening on {} — the RPC protocol has no authentication: anyone who can reach this port \
             can run computations and read this process's device memory. Use it only on a network you trust.",
            a.host
        );
    }
    let (threads, warning) = ferrite::decoder::resolve_threads(a.threads);
    if let Some(w) = warning {
        stderrln!("ferrite: {w}");
    }
    let endpoint = format!("{}:{}", a.host, a.port);
    // the port is checked first: ggml's server only says "Failed to create server socket"
    if let Err(e) = std::net::TcpListener::bind((a.host.as_str(), a.port)) {
        ferrite::bail_input!("cannot listen on {endpoint}: {e}");
    }
    stderrln!(
        "ferrite: serving {} on {endpoint} with {threads} threads (Ctrl-C stops)",
        devices.iter().map(|d| d.name()).collect::<Vec<_>>().join(", ")
    );
    // ferrite's matrix kernel on the served CPU, as in a local run (FERRITE_GGML_MATMUL=1: ggml's)
    let own_kernels = std::env::var_os("FERRITE_GGML_MATMUL").is_none_or(|v| v == "0");
    let memory = a.mem.map(|m| (m as usize).saturating_mul(1 << 20));
    ggml::rpc::start_server(&endpoint, a.cache.as_deref(), threads, &devices, own_kernels, memory)?;
    Ok(())
}
