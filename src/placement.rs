//! Which device computes which layer: llama.cpp's placement (`llama_model::load_tensors`). The
//! last `-ngl` of the n_layer + 1 "layers" (the repeating blocks, then the output) go to the
//! offload devices, split between them by `--tensor-split` (or by their free memory), the rest
//! and the input embedding stay on the CPU. Pure arithmetic, so it is tested without devices.

/// Where a layer lives: an offload device (by its index in the list given) or the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Device(usize),
    Cpu,
}

/// The placement of a model of `n_layer` blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub layers: Vec<Place>,
    pub output: Place,
}

impl Placement {
    /// Everything on the CPU.
    pub fn cpu(n_layer: usize) -> Placement {
        Placement { layers: vec![Place::Cpu; n_layer], output: Place::Cpu }
    }

    /// Where the file tensor `name` goes: a block's tensors with their block, the output norm
    /// and projection with the output layer, the rest (the input embedding) on the CPU, as
    /// llama.cpp places them. `as_output`: the tensor is declared as the output projection (a
    /// tied one is the embedding again).
    pub fn of_tensor(&self, name: &str, as_output: bool) -> Place {
        if let Some(il) = name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|n| n.parse::<usize>().ok()) {
            return self.layers.get(il).copied().unwrap_or(Place::Cpu);
        }
        if as_output || name.starts_with("output.") || name.starts_with("output_norm.") {
            self.output
        } else {
            Place::Cpu
        }
    }

    /// How many blocks each device holds, by device index.
    pub fn per_device(&self, n_devices: usize) -> Vec<usize> {
        let mut n = vec![0; n_devices];
        for p in &self.layers {
            if let Place::Device(d) = p {
                n[*d] += 1;
            }
        }
        n
    }
}

/// Places `n_layer` blocks and the output over `weights.len()` offload devices.
///
/// `n_gpu_layers`: how many of the n_layer + 1 layers to offload, counted from the output down
/// (negative: all, as llama.cpp's -1). `weights`: each device's share — `--tensor-split`, or
/// the devices' free memory when that is absent or all zero (the caller passes what it has).
pub fn place(n_layer: usize, n_gpu_layers: i32, weights: &[f32]) -> Placement {
    if weights.is_empty() || n_gpu_layers == 0 {
        return Placement::cpu(n_layer);
    }
    let n_all = n_layer as i64 + 1;
    let ngl = if n_gpu_layers < 0 { n_all } else { n_gpu_layers as i64 };
    let start = (n_all - ngl).max(0);
    let active = ngl.min(n_all);
    // cumulative shares, normalised to end at 1 (f32, as llama.cpp computes them)
    let mut splits = Vec::with_capacity(weights.len());
    let mut sum = 0f32;
    for &w in weights {
        sum += w.max(0.0);
        splits.push(sum);
    }
    if sum <= 0.0 {
        splits = (1..=weights.len()).map(|i| i as f32).collect();
        sum = weights.len() as f32;
    }
    for s in &mut splits {
        *s /= sum;
    }
    let at = |il: i64| -> Place {
        if il < start || il - start >= active {
            return Place::Cpu;
        }
        let x = (il - start) as f32 / active as f32;
        // upper_bound: the first split point above x
        let d = splits.iter().position(|&s| s > x).unwrap_or(splits.len() - 1);
        Place::Device(d)
    };
    Placement { layers: (0..n_layer as i64).map(at).collect(), output: at(n_layer as i64) }
}

/// Parses `--tensor-split 3,1` (or `3/1`, as llama.cpp accepts) into shares.
pub fn parse_split(s: &str) -> Result<Vec<f32>, String> {
    let parts: Vec<&str> = s.split([',', '/']).map(str::trim).collect();
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        match p.parse::<f32>() {
            Ok(v) if v.is_finite() && v >= 0.0 => out.push(v),
            _ => return Err(format!("--tensor-split {s:?}: {p:?} is not a share (a number 0 or more)")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Place::{Cpu, Device};

    #[test]
    fn all_layers_on_one_device() {
        let p = place(4, 99, &[1.0]);
        assert_eq!(p.layers, vec![Device(0); 4]);
        assert_eq!(p.output, Device(0));
        assert_eq!(place(4, -1, &[1.0]), p);
    }

    #[test]
    fn the_last_layers_go_first() {
        // -ngl 2 of 4 blocks + output: block 3 and the output
        let p = place(4, 2, &[1.0]);
        assert_eq!(p.layers, vec![Cpu, Cpu, Cpu, Device(0)]);
        assert_eq!(p.output, Device(0));
        // -ngl 1: only the output
        let p = place(4, 1, &[1.0]);
        assert_eq!(p.layers, vec![Cpu; 4]);
        assert_eq!(p.output, Device(0));
        assert_eq!(place(4, 0, &[1.0]), Placement::cpu(4));
        assert_eq!(place(4, 99, &[]), Placement::cpu(4));
    }

    #[test]
    fn tensor_split_shares_layers_as_llama_cpp() {
        // 30 blocks + output over two devices 1:1: 31 layers, the split point at 0.5
        let p = place(30, 99, &[1.0, 1.0]);
        assert_eq!(p.per_device(2), vec![16, 14]);
        assert_eq!(p.output, Device(1));
        // 3:1
        let p = place(30, 99, &[3.0, 1.0]);
        assert_eq!(p.per_device(2), vec![24, 6]);
        // a zero share gets nothing; all zero shares split evenly
        let p = place(30, 99, &[0.0, 1.0]);
        assert_eq!(p.per_device(2), vec![0, 30]);
        assert_eq!(place(30, 99, &[0.0, 0.0]), place(30, 99, &[1.0, 1.0]));
        // a partial offload over two devices and the CPU
        let p = place(30, 20, &[1.0, 1.0]);
        assert_eq!(p.layers.iter().filter(|l| **l == Cpu).count(), 11);
        assert_eq!(p.per_device(2), vec![10, 9]);
    }

    #[test]
    fn tensors_go_with_their_layer() {
        let p = place(4, 2, &[1.0]);
        assert_eq!(p.of_tensor("blk.3.attn_q.weight", false), Device(0));
        assert_eq!(p.of_tensor("blk.0.ffn_up.weight", false), Cpu);
        assert_eq!(p.of_tensor("output_norm.weight", false), Device(0));
        assert_eq!(p.of_tensor("token_embd.weight", false), Cpu);
        assert_eq!(p.of_tensor("token_embd.weight", true), Device(0));
        assert_eq!(p.of_tensor("rope_freqs.weight", false), Cpu);
    }

    #[test]
    fn split_flags_parse() {
        assert_eq!(parse_split("3,1").unwrap(), vec![3.0, 1.0]);
        assert_eq!(parse_split("1/1/2").unwrap(), vec![1.0, 1.0, 2.0]);
        assert!(parse_split("1,x").is_err() && parse_split("-1").is_err());
    }
}
