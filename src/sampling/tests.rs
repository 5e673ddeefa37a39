//! Unit tests of the sampler: llama.cpp's `tests/test-sampling.cpp` tables ported row by row,
//! then the chain, determinism, greedy, logit-bias parsing, bans, validation and the draw's
//! statistics.

use super::candidates::{self as ops, Candidate, Candidates};
use super::*;
use crate::error::{exit_code, BadInput};

const TOL: f32 = 1e-5;

fn assert_probs(c: &Candidates, expected: &[f32], what: &str) {
    let got = c.probs();
    assert_eq!(got.len(), expected.len(), "{what}: got {got:?}, expected {expected:?}");
    for (g, e) in got.iter().zip(expected) {
        assert!((g - e).abs() < TOL, "{what}: got {got:?}, expected {expected:?}");
    }
}

/// llama.cpp's `llama_sampler_init_dist(0)` step that every table applies last: it draws (with
/// whatever seed; the tables only look at the probabilities) and normalises p.
fn dist(c: &mut Candidates) {
    let mut rng = Xoshiro256::from_seed(0);
    ops::dist(c, &mut rng);
}

fn is_bad_input(e: &anyhow::Error) -> bool {
    e.downcast_ref::<BadInput>().is_some() && exit_code(e) == 2
}

const P4: [f32; 4] = [0.1, 0.2, 0.3, 0.4];

// ---- test-sampling.cpp tables ----

#[test]
fn table_temperature() {
    // test_temp and the delta = 0 rows of test_temp_ext (plain temperature).
    let rows: &[(&[f32], &[f32], f32)] =
        &[(&P4, &[0.1, 0.2, 0.3, 0.4], 1.0), (&P4, &[0.0, 0.0, 0.0, 1.0], 0.0), (&P4, &[0.0, 0.0, 0.0, 1.0], -1.0)];
    for &(probs, expected, t) in rows {
        let mut c = Candidates::from_probs(probs);
        ops::temperature(&mut c, t);
        dist(&mut c);
        assert_probs(&c, expected, &format!("temp {t}"));
    }
}

#[test]
fn table_top_k() {
    let rows: &[(&[f32], &[f32], i32)] =
        &[(&P4, &[1.0], 1), (&P4, &[0.44444, 0.33333, 0.22222], 3), (&P4, &[0.4, 0.3, 0.2, 0.1], 4), (&P4, &[0.1, 0.2, 0.3, 0.4], 0)];
    for &(probs, expected, k) in rows {
        let mut c = Candidates::from_probs(probs);
        ops::top_k(&mut c, k);
        dist(&mut c);
        assert_probs(&c, expected, &format!("top-k {k}"));
    }
}

#[test]
fn table_top_p() {
    let rows: &[(&[f32], &[f32], f32)] = &[
        (&P4, &[1.0], 0.0),
        (&P4, &[0.571429, 0.428571], 0.7),
        (&P4, &[0.44444, 0.33333, 0.22222], 0.8),
        (&P4, &[0.1, 0.2, 0.3, 0.4], 1.0),
    ];
    for &(probs, expected, p) in rows {
        let mut c = Candidates::from_probs(probs);
        ops::top_p(&mut c, p, 0);
        dist(&mut c);
        assert_probs(&c, expected, &format!("top-p {p}"));
    }
}

#[test]
fn table_min_p() {
    let rows: &[(&[f32], &[f32], f32)] = &[
        (&P4, &[0.1 / 1.0, 0.2 / 1.0, 0.3 / 1.0, 0.4 / 1.0], 0.00),
        (&P4, &[0.1 / 1.0, 0.2 / 1.0, 0.3 / 1.0, 0.4 / 1.0], 0.24),
        (&P4, &[0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9], 0.26),
        (&P4, &[0.2 / 0.9, 0.3 / 0.9, 0.4 / 0.9], 0.49),
        (&P4, &[0.3 / 0.7, 0.4 / 0.7], 0.51),
        (&P4, &[0.3 / 0.7, 0.4 / 0.7], 0.74),
        (&P4, &[0.4 / 0.4], 0.76),
        (&P4, &[0.4 / 0.4], 1.00),
        (&P4, &[0.4 / 0.4], 1.05),
    ];
    for &(probs, expected, p) in rows {
        let mut c = Candidates::from_probs(probs);
        ops::min_p(&mut c, p, 0);
        dist(&mut c);
        assert_probs(&c, expected, &format!("min-p {p}"));
    }
}

#[test]
fn table_typical() {
    // As in llama.cpp, no draw follows: p are the softmax values typical-p computed.
    let rows: &[(&[f32], &[f32], f32)] = &[(&[0.97, 0.01, 0.01, 0.01], &[0.97], 0.5), (&[0.4, 0.2, 0.2, 0.2], &[0.2, 0.2, 0.2], 0.5)];
    for &(probs, expected, p) in rows {
        let mut c = Candidates::from_probs(probs);
        ops::typical(&mut c, p, 0);
        assert_probs(&c, expected, &format!("typical {p} on {probs:?}"));
    }
}

#[test]
fn table_penalties() {
    const U5: [f32; 5] = [0.2; 5];
    // (probs, history, expected, repeat, frequency, presence); window = history length.
    type Row = (&'static [f32], &'static [u32], &'static [f32], f32, f32, f32);
    let rows: &[Row] = &[
        (&U5, &[0], &[0.0, 0.25, 0.25, 0.25, 0.25], 50.0, 0.0, 0.0),
        (&U5, &[0, 1, 2], &[0.0, 0.0, 0.0, 0.5, 0.5], 50.0, 0.0, 0.0),
        (&U5, &[0, 1, 2, 0, 0], &[0.0, 0.0, 0.0, 0.5, 0.5], 50.0, 0.0, 0.0),
        (&U5, &[0], &[0.000011, 0.249997, 0.249997, 0.249997, 0.249997], 1.0, 5.0, 5.0),
        (&U5, &[0, 1, 2], &[0.000023, 0.000023, 0.000023, 0.499966, 0.499966], 1.0, 5.0, 5.0),
        (&U5, &[0, 1, 2, 0, 0], &[0.000000, 0.000023, 0.000023, 0.499977, 0.499977], 1.0, 5.0, 5.0),
    ];
    for &(probs, history, expected, repeat, freq, pres) in rows {
        let mut pen = Penalties::new(probs.len(), history.len() as i32, repeat, freq, pres);
        for &t in history {
            pen.accept(t);
        }
        let mut c = Candidates::from_probs(probs);
        pen.apply(&mut c);
        dist(&mut c);
        assert_probs(&c, expected, &format!("penalties {repeat}/{freq}/{pres} after {history:?}"));
        // The dense-logits path used by the sampler gives the same logits.
        let mut logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        pen.apply_to_logits(&mut logits);
        let direct = Candidates::from_probs(probs);
        let mut scanned = direct.clone();
        scanned.data.reverse();
        pen.apply(&mut scanned);
        for x in &scanned.data {
            assert_eq!(x.logit, logits[x.id as usize]);
        }
    }
}

#[test]
fn dist_draws_once_even_for_a_single_candidate() {
    // test_dist_singleton_rng: a one-candidate draw keeps the RNG aligned with a real one.
    let mut singleton = Xoshiro256::from_seed(4242);
    let mut control = Xoshiro256::from_seed(4242);
    assert_eq!(ops::dist(&mut Candidates::from_logits(&[0.0]), &mut singleton), Some(0));
    ops::dist(&mut Candidates::from_logits(&[0.0, 0.0]), &mut control);
    let logits = vec![0.0f32; 256];
    for _ in 0..4 {
        let a = ops::dist(&mut Candidates::from_logits(&logits), &mut singleton);
        let b = ops::dist(&mut Candidates::from_logits(&logits), &mut control);
        assert_eq!(a, b);
    }
}

/// test_sampler_queue: top-k / top-p / min-p in every order over logits ln(id), n_vocab 10000
/// (token 0 has p = 0), checking size and first and last ids after each step.
fn sampler_queue(n_vocab: usize, seq: &str, top_k: i32, top_p: f32, min_p: f32) {
    let logits: Vec<f32> = (0..n_vocab).map(|i| (i as f32).ln()).collect();
    let mut c = Candidates::from_logits(&logits);
    let n = n_vocab as i32;
    let max_token_id = n - 1;
    let mut min_token_id = 0i32;
    for s in seq.chars() {
        match s {
            'k' => ops::top_k(&mut c, top_k),
            'p' => ops::top_p(&mut c, top_p, 1),
            'm' => ops::min_p(&mut c, min_p, 1),
            _ => unreachable!(),
        }
        dist(&mut c);
        let size = c.len() as i32;
        let id = |i: i32| c.data[i as usize].id as i32;
        let what = format!("queue {seq} at '{s}' (top_k {top_k}, top_p {top_p}, min_p {min_p})");
        match s {
            'k' => {
                let expected_size = size.min(top_k);
                min_token_id = min_token_id.max(n - top_k);
                assert_eq!(size, expected_size, "{what}");
                assert_eq!(id(0), max_token_id, "{what}");
                assert_eq!(id(expected_size - 1), min_token_id, "{what}");
            }
            'p' => {
                let divisor = n * (n - 1) / 2 - min_token_id * (min_token_id - 1) / 2;
                let target = (top_p * divisor as f32).ceil() as i32;
                min_token_id = n;
                let mut expected_size = 0;
                let mut cumsum = 0;
                loop {
                    min_token_id -= 1;
                    expected_size += 1;
                    cumsum += min_token_id;
                    if cumsum >= target {
                        break;
                    }
                }
                if min_token_id == 1 {
                    min_token_id -= 1;
                    expected_size += 1;
                }
                assert_eq!(size, expected_size, "{what}");
                assert!(!c.sorted || id(0) == max_token_id, "{what}");
                assert!(!c.sorted || id(expected_size - 1) == min_token_id, "{what}");
            }
            'm' => {
                let expected_size = (((1.0f32 - min_p) * n as f32).ceil() as i32).max(1).min(size);
                min_token_id = ((min_p * n as f32).floor() as i32).max(1).max(n - size).min(n - 1);
                assert_eq!(size, expected_size, "{what}");
                assert!(!c.sorted || id(0) == max_token_id, "{what}");
                assert!(!c.sorted || id(expected_size - 1) == min_token_id, "{what}");
            }
            _ => unreachable!(),
        }
    }
}

#[test]
fn table_sampler_queue() {
    let rows: &[(&str, i32, f32, f32)] = &[
        ("k", 10000, 1.0, 1.0),
        ("k", 1, 1.0, 1.0),
        ("p", 10000, 1.0, 1.0),
        ("p", 10000, 0.0, 1.0),
        ("m", 10000, 1.0, 1.0),
        ("m", 10000, 1.0, 1e-12),
        ("k", 100, 1.0000, 1.0),
        ("p", 10000, 0.0003, 1.0),
        ("p", 10000, 0.8000, 1.0),
        ("m", 10000, 1.0000, 9997.9 / 9999.0),
        ("m", 10000, 1.0000, 0.1),
        ("kp", 100, 0.8, 0.1),
        ("km", 100, 0.8, 0.1),
        ("pk", 100, 0.8, 0.1),
        ("pm", 100, 0.8, 0.1),
        ("mk", 100, 0.8, 0.1),
        ("mp", 100, 0.8, 9997.9 / 9999.0),
        ("mp", 100, 0.8, 0.1),
        ("kpm", 100, 0.8, 0.1),
        ("kmp", 100, 0.8, 0.1),
        ("pkm", 100, 0.8, 0.1),
        ("pmk", 100, 0.8, 0.1),
        ("mkp", 100, 0.8, 0.1),
        ("mpk", 100, 0.8, 0.1),
    ];
    for &(seq, k, p, m) in rows {
        sampler_queue(10000, seq, k, p, m);
    }
}

// ---- the pure steps beyond the tables ----

#[test]
fn fill_top_k_matches_fill_then_top_k() {
    // Logits from a few values only, so that ties straddle the cut.
    let mut rng = Xoshiro256::from_seed(11);
    for n in [1usize, 2, 7, 100, 5000] {
        let logits: Vec<f32> = (0..n).map(|_| (rng.next_u64() % 7) as f32 - 3.0).collect();
        for k in [1usize, 2, 3, 40, n.saturating_sub(1).max(1), n] {
            let mut a = Candidates::new();
            a.fill_top_k(&logits, k);
            let mut b = Candidates::from_logits(&logits);
            ops::top_k(&mut b, k as i32);
            assert_eq!(a.data, b.data, "n {n} k {k}");
            assert!(a.sorted && b.sorted);
        }
    }
}

#[test]
fn fill_top_k_falls_back_on_ascending_logits() {
    // Every token beats the k-th best: the heap gives up and the partial selection takes over.
    let logits: Vec<f32> = (0..20_000).map(|i| (i as f32).ln()).collect();
    let mut a = Candidates::new();
    a.fill_top_k(&logits, 40);
    let mut b = Candidates::from_logits(&logits);
    ops::top_k(&mut b, 40);
    assert_eq!(a.data, b.data);
    assert_eq!(a.data[0].id, 19_999);
}

#[test]
fn argmax_first_of_the_highest() {
    let rows: &[(&[f32], usize)] = &[
        (&[], 0),
        (&[1.0], 0),
        (&[1.0, 3.0, 3.0], 1),
        (&[f32::NEG_INFINITY; 5], 0),
        (&[f32::NAN, f32::NAN], 0),
        (&[f32::NAN, 1.0, f32::NAN], 1),
        (&[-0.0, 0.0], 0),
    ];
    for &(v, i) in rows {
        assert_eq!(ops::argmax(v), i, "{v:?}");
    }
    // Across block boundaries and in the tail.
    for n in [15usize, 16, 17, 33, 1000, 1003] {
        for at in [0, n / 2, n - 1] {
            let mut v = vec![0.5f32; n];
            v[at] = 2.0;
            if at + 1 < n {
                v[n - 1] = 2.0;
            }
            assert_eq!(ops::argmax(&v), at, "n {n} at {at}");
        }
    }
}

#[test]
fn long_sorts_match_the_comparator() {
    // Over 4096 entries `sort` goes through integer keys; the result must be `order` exactly,
    // zeros of both signs and infinities included.
    let mut rng = Xoshiro256::from_seed(5);
    let values = [0.0f32, -0.0, 1.5, -2.0, f32::NEG_INFINITY, f32::INFINITY, 3.25];
    let logits: Vec<f32> = (0..10_000).map(|_| values[(rng.next_u64() % 7) as usize]).collect();
    let mut a = Candidates::from_logits(&logits);
    a.data.reverse();
    a.sort();
    let mut b = Candidates::from_logits(&logits);
    b.data.sort_by(ops::order);
    assert_eq!(a.data, b.data);
}

#[test]
fn top_k_keeps_lowest_ids_among_ties() {
    let mut c = Candidates::from_logits(&[1.0, 2.0, 2.0, 2.0, 0.0, 2.0]);
    ops::top_k(&mut c, 2);
    assert_eq!(c.ids(), vec![1, 2]);
    let mut h = Candidates::new();
    h.fill_top_k(&[1.0, 2.0, 2.0, 2.0, 0.0, 2.0], 2);
    assert_eq!(h.ids(), vec![1, 2]);
}

#[test]
fn top_p_partial_sort_on_large_lists() {
    // Over 1024 candidates the first pass sorts only 256; a threshold beyond them sorts the rest.
    let logits: Vec<f32> = (0..3000).map(|i| ((i * 7919) % 3000) as f32 * 0.001).collect();
    for p in [0.01f32, 0.5, 0.99] {
        let mut a = Candidates::from_logits(&logits);
        ops::top_p(&mut a, p, 0);
        let mut b = Candidates::from_logits(&logits);
        b.sort();
        let n = b.len();
        ops::top_p(&mut b, p, 0);
        assert!(b.len() < n);
        assert_eq!(a.ids(), b.ids(), "top-p {p}");
    }
}

#[test]
fn logit_bias_on_shuffled_and_direct_lists() {
    let biases = [LogitBias { token: 1, bias: 0.5 }, LogitBias { token: 3, bias: -1.0 }, LogitBias { token: 1, bias: 0.25 }];
    let mut c = Candidates::from_logits(&[0.0, 0.0, 0.0, 0.0]);
    ops::logit_bias(&mut c, &biases);
    assert_eq!(c.data.iter().map(|x| x.logit).collect::<Vec<_>>(), vec![0.0, 0.75, 0.0, -1.0]);
    let mut s = Candidates::from_logits(&[0.0, 0.0, 0.0, 0.0]);
    s.data.reverse();
    ops::logit_bias(&mut s, &biases);
    assert_eq!(s.data.iter().map(|x| (x.id, x.logit)).collect::<Vec<_>>(), vec![(3, -1.0), (2, 0.0), (1, 0.75), (0, 0.0)]);
}

#[test]
fn softmax_survives_all_banned_and_nan() {
    let mut c = Candidates::from_logits(&[f32::NEG_INFINITY; 3]);
    ops::softmax(&mut c);
    assert_probs(&c, &[1.0 / 3.0; 3], "all -inf");
    let mut c = Candidates::from_logits(&[f32::NAN, 1.0]);
    let mut rng = Xoshiro256::from_seed(1);
    assert_eq!(ops::dist(&mut c, &mut rng), Some(1));
    assert!(ops::dist(&mut Candidates::new(), &mut rng).is_none());
}

// ---- penalties window ----

#[test]
fn penalty_window_slides() {
    let mut p = Penalties::new(10, 2, 2.0, 0.0, 0.0);
    for t in [0, 1, 2, 2] {
        p.accept(t);
    }
    assert_eq!(p.window().collect::<Vec<_>>(), vec![2, 2]);
    assert_eq!((p.count(0), p.count(1), p.count(2)), (0, 0, 2));
    let mut logits = vec![1.0f32; 10];
    p.apply_to_logits(&mut logits);
    assert_eq!(logits[..3], [1.0, 1.0, 0.5]);
    p.accept(99); // outside the vocabulary: ignored
    assert_eq!(p.window().collect::<Vec<_>>(), vec![2, 2]);
    p.reset();
    assert_eq!(p.window().count(), 0);
    assert_eq!(p.count(2), 0);

    // -1: unbounded; 0: off.
    let mut all = Penalties::new(10, -1, 1.0, 1.0, 0.0);
    for t in 0..10u32 {
        for _ in 0..=t {
            all.accept(t);
        }
    }
    assert!((0..10u32).all(|t| all.count(t) == t + 1));
    let mut off = Penalties::new(10, 0, 2.0, 1.0, 1.0);
    off.accept(1);
    assert!(!off.is_enabled() && off.count(1) == 0);
}

#[test]
fn repeat_penalty_sign_rule() {
    let p = Penalties::new(4, 4, 2.0, 0.5, 0.25);
    assert_eq!(p.penalize(3.0, 2), 3.0 / 2.0 - (2.0 * 0.5 + 0.25));
    assert_eq!(p.penalize(-3.0, 1), -3.0 * 2.0 - (0.5 + 0.25));
    assert_eq!(p.penalize(0.0, 1), -0.75);
}

// ---- the chain ----

fn ln4() -> Vec<f32> {
    P4.iter().map(|p| p.ln()).collect()
}

fn cfg(seed: u64) -> SamplerConfig {
    SamplerConfig { seed: Some(seed), ..SamplerConfig::default() }
}

#[test]
fn chain_tables() {
    // Expected values from an independent f64 implementation of the same chain.
    let a = SamplerConfig { top_k: 3, top_p: 0.8, temp: 0.5, ..cfg(1) };
    let b = SamplerConfig { repeat_penalty: 1.5, ..a.clone() };
    type Row = (SamplerConfig, &'static [u32], &'static [u32], &'static [f32]);
    let rows: &[Row] = &[(a, &[], &[3, 2, 1], &[0.551724, 0.310345, 0.137931]), (b, &[3], &[2, 3, 1], &[0.463918, 0.329897, 0.206186])];
    for (config, history, ids, probs) in rows {
        let mut s = Sampler::new(config.clone(), 4).unwrap();
        s.set_history(history);
        let t = s.sample(&ln4()).unwrap();
        assert!(ids.contains(&t));
        assert_eq!(s.candidates().ids(), *ids);
        assert_probs(s.candidates(), probs, &format!("{config:?}"));
    }
}

#[test]
fn chain_with_every_step() {
    let logits: Vec<f32> = (0..100).map(|i| 3.0 * (i as f32 * 0.7).sin() + 0.01 * i as f32).collect();
    let config = SamplerConfig {
        temp: 0.7,
        typical_p: 0.9,
        repeat_penalty: 1.3,
        frequency_penalty: 0.1,
        presence_penalty: 0.2,
        repeat_last_n: 6,
        logit_bias: vec![LogitBias::parse("5+2").unwrap(), LogitBias::parse("11-inf").unwrap()],
        ..cfg(7)
    };
    let mut s = Sampler::new(config, 100).unwrap();
    for t in [11, 20, 20, 29, 3, 5, 5, 5] {
        s.accept(t);
    }
    s.sample(&logits).unwrap();
    let ids: &[u32] = &[92, 83, 74, 65, 56, 47, 38, 93, 91, 84, 75, 82, 66, 57, 2, 73, 48, 39, 64, 30, 21, 55, 12, 46, 37];
    let probs: &[f32] = &[
        0.107175, 0.094169, 0.082642, 0.072437, 0.063416, 0.055452, 0.048429, 0.039975, 0.038285, 0.036800, 0.033845, 0.032119, 0.031098,
        0.028546, 0.027838, 0.026922, 0.026178, 0.023982, 0.022545, 0.021949, 0.020068, 0.018863, 0.018329, 0.015769, 0.013171,
    ];
    assert_eq!(s.candidates().ids(), ids);
    assert_probs(s.candidates(), probs, "full chain");
}

#[test]
fn same_seed_same_tokens() {
    let mut rng = Xoshiro256::from_seed(3);
    let rows: Vec<Vec<f32>> = (0..50).map(|_| (0..1000).map(|_| (rng.next_f64() * 8.0) as f32).collect()).collect();
    let run = |seed: u64| {
        let config = SamplerConfig { repeat_penalty: 1.1, temp: 1.2, top_k: 100, top_p: 0.99, min_p: 0.0, ..cfg(seed) };
        let mut s = Sampler::new(config, 1000).unwrap();
        let mut out = Vec::new();
        for r in &rows {
            let t = s.sample(r).unwrap();
            s.accept(t);
            out.push(t);
        }
        (s, out)
    };
    let (mut s, a) = run(1234);
    let (_, b) = run(1234);
    let (_, c) = run(1235);
    assert_eq!(a, b);
    assert_ne!(a, c);
    // reset rewinds to the start of the stream.
    s.reset();
    let again: Vec<u32> = rows
        .iter()
        .map(|r| {
            let t = s.sample(r).unwrap();
            s.accept(t);
            t
        })
        .collect();
    assert_eq!(a, again);
}

#[test]
fn copied_and_in_place_logits_agree() {
    // Penalties on but an empty window take the copy path without changing a logit: the tokens
    // must be those of the in-place path, NaNs included.
    let mut rng = Xoshiro256::from_seed(8);
    let rows: Vec<Vec<f32>> =
        (0..40).map(|_| (0..3000).map(|i| if i % 97 == 5 { f32::NAN } else { (rng.next_f64() * 12.0) as f32 }).collect()).collect();
    for base in [cfg(3), SamplerConfig { top_k: 0, ..cfg(3) }, SamplerConfig::greedy()] {
        let mut plain = Sampler::new(base.clone(), 3000).unwrap();
        let mut copied = Sampler::new(SamplerConfig { repeat_penalty: 1.3, ..base }, 3000).unwrap();
        for r in &rows {
            assert_eq!(plain.sample(r).unwrap(), copied.sample(r).unwrap());
            assert_eq!(plain.candidates().data, copied.candidates().data);
        }
    }
}

#[test]
fn random_seed_is_reported_and_reproduces() {
    let logits: Vec<f32> = (0..500).map(|i| (i % 17) as f32 * 0.1).collect();
    let mut s = Sampler::new(SamplerConfig::default(), 500).unwrap();
    let mut r = Sampler::new(cfg(s.seed()), 500).unwrap();
    for _ in 0..20 {
        assert_eq!(s.sample(&logits).unwrap(), r.sample(&logits).unwrap());
    }
}

#[test]
fn greedy_ties_go_to_the_lowest_id() {
    let mut s = Sampler::new(SamplerConfig::greedy(), 6).unwrap();
    assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0, 3.0, -1.0]).unwrap(), 1);
    let mut s = Sampler::new(SamplerConfig { temp: -1.0, ..SamplerConfig::default() }, 3).unwrap();
    assert_eq!(s.sample(&[f32::NAN, 2.0, 2.0]).unwrap(), 1);
    assert_eq!(ops::greedy(&Candidates::from_logits(&[5.0, 5.0])), Some(0));
}

#[test]
fn greedy_after_bias_and_penalties() {
    let logits = [1.0, 4.0, 3.0, 2.0];
    let config = SamplerConfig { logit_bias: vec![LogitBias::parse("1-inf").unwrap()], ..SamplerConfig::greedy() };
    let mut s = Sampler::new(config, 4).unwrap();
    assert_eq!(s.sample(&logits).unwrap(), 2);
    let config = SamplerConfig { repeat_penalty: 2.0, ..SamplerConfig::greedy() };
    let mut s = Sampler::new(config, 4).unwrap();
    s.set_history(&[1, 2]);
    // 4/2 = 2 and 3/2 = 1.5 fall below token 3's 2.0; 1 ties it at 2.0 and has the lower id.
    assert_eq!(s.sample(&logits).unwrap(), 1);
    s.set_history(&[1]);
    assert_eq!(s.sample(&logits).unwrap(), 2);
}

#[test]
fn banned_token_is_never_drawn() {
    let mut logits = vec![0.0f32; 50];
    logits[7] = 10.0;
    let config =
        SamplerConfig { temp: 1.5, top_k: 0, top_p: 1.0, min_p: 0.0, logit_bias: vec![LogitBias::parse("7-inf").unwrap()], ..cfg(9) };
    let mut s = Sampler::new(config, 50).unwrap();
    let mut seen = [false; 50];
    for _ in 0..10_000 {
        seen[s.sample(&logits).unwrap() as usize] = true;
    }
    assert!(!seen[7]);
    assert!(seen.iter().filter(|&&x| x).count() == 49);
    // Everything banned: still a token, no panic.
    let all: Vec<LogitBias> = (0..3).map(|t| LogitBias { token: t, bias: f32::NEG_INFINITY }).collect();
    let mut s = Sampler::new(SamplerConfig { logit_bias: all, ..cfg(1) }, 3).unwrap();
    assert!(s.sample(&[1.0, 2.0, 3.0]).unwrap() < 3);
}

#[test]
fn draw_frequencies_match_probabilities() {
    let probs = [0.5f32, 0.25, 0.15, 0.07, 0.03];
    let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    let config = SamplerConfig { temp: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0, ..cfg(2024) };
    let mut s = Sampler::new(config, probs.len()).unwrap();
    const N: usize = 100_000;
    let mut counts = [0usize; 5];
    for _ in 0..N {
        counts[s.sample(&logits).unwrap() as usize] += 1;
    }
    for (c, p) in counts.iter().zip(probs) {
        let f = *c as f32 / N as f32;
        // 1% absolute is over 6 standard deviations at N = 100k.
        assert!((f - p).abs() < 0.01, "frequency {f} for p {p} ({counts:?})");
    }
}

#[test]
fn default_chain_draws_only_inside_top_k() {
    let logits: Vec<f32> = (0..1000).map(|i| i as f32 * 0.001).collect();
    let mut s = Sampler::new(SamplerConfig { temp: 5.0, top_p: 1.0, min_p: 0.0, ..cfg(5) }, 1000).unwrap();
    for _ in 0..2000 {
        assert!(s.sample(&logits).unwrap() >= 960);
    }
    assert_eq!(s.candidates().len(), 40);
}

#[test]
fn set_history_keeps_the_last_window() {
    let config = SamplerConfig { repeat_last_n: 3, frequency_penalty: 1.0, ..cfg(1) };
    let mut s = Sampler::new(config, 10).unwrap();
    s.set_history(&[1, 1, 1, 2, 3, 4]);
    assert_eq!(s.penalties().window().collect::<Vec<_>>(), vec![2, 3, 4]);
    assert_eq!(s.penalties().count(1), 0);
    s.reset();
    assert_eq!(s.penalties().window().count(), 0);
}

#[test]
fn sample_leaves_the_callers_logits_alone() {
    let logits = vec![0.5f32, 1.0, f32::NAN, 2.0];
    let before = logits.clone();
    let config = SamplerConfig { repeat_penalty: 3.0, logit_bias: vec![LogitBias::parse("3+1").unwrap()], ..cfg(1) };
    let mut s = Sampler::new(config, 4).unwrap();
    s.accept(3);
    s.sample(&logits).unwrap();
    assert_eq!(logits[..2], before[..2]);
    assert!(logits[2].is_nan());
    assert_eq!(logits[3], before[3]);
}

// ---- logit-bias syntax ----

#[test]
fn logit_bias_parses() {
    let good: &[(&str, u32, f32)] = &[
        ("15043+1", 15043, 1.0),
        ("15043-1", 15043, -1.0),
        ("15043-1.5", 15043, -1.5),
        ("0+0.25", 0, 0.25),
        ("15043+.5", 15043, 0.5),
        ("15043-1e2", 15043, -100.0),
        (" 7+3 ", 7, 3.0),
        ("15043-inf", 15043, f32::NEG_INFINITY),
        ("15043-Infinity", 15043, f32::NEG_INFINITY),
        ("4294967295+1", u32::MAX, 1.0),
    ];
    for &(s, token, bias) in good {
        let b = LogitBias::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(b, LogitBias { token, bias }, "{s}");
        assert_eq!(LogitBias::parse(&b.to_string()).unwrap(), b, "round trip of {s}");
    }
}

#[test]
fn logit_bias_rejects() {
    let bad = [
        "",
        "15043",
        "15043+",
        "15043-",
        "+1",
        "-15043+1",
        "abc+1",
        "15043*1",
        "15043+-1",
        "15043--1",
        "15043++1",
        "15043+inf",
        "15043+nan",
        "15043-nan",
        "15043+1x",
        "15043+1 2",
        "4294967296+1",
        "15043 +1",
        "15043+ 1",
        "1.5+1",
    ];
    for s in bad {
        match LogitBias::parse(s) {
            Ok(b) => panic!("'{s}' parsed as {b:?}"),
            Err(e) => assert!(is_bad_input(&e), "'{s}': {e}"),
        }
    }
}

// ---- validation ----

#[test]
fn defaults_are_llama_cpp_defaults() {
    let d = SamplerConfig::default();
    assert_eq!((d.temp, d.top_k, d.top_p, d.min_p, d.typical_p), (0.8, 40, 0.95, 0.05, 1.0));
    assert_eq!((d.repeat_penalty, d.repeat_last_n, d.presence_penalty, d.frequency_penalty), (1.0, 64, 0.0, 0.0));
    assert!(d.logit_bias.is_empty() && d.seed.is_none());
    d.validate().unwrap();
}

#[test]
fn validate_accepts_edges() {
    let d = SamplerConfig::default();
    let ok = [
        SamplerConfig { temp: 0.0, ..d.clone() },
        SamplerConfig { temp: -0.5, ..d.clone() },
        SamplerConfig { top_k: 0, top_p: 1.0, min_p: 0.0, typical_p: 1.0, ..d.clone() },
        SamplerConfig { min_p: 1.0, typical_p: 0.01, top_p: 0.01, ..d.clone() },
        SamplerConfig { repeat_last_n: -1, repeat_penalty: 0.5, presence_penalty: -1.0, frequency_penalty: 2.0, ..d.clone() },
        SamplerConfig { logit_bias: vec![LogitBias { token: 3, bias: f32::NEG_INFINITY }], ..d.clone() },
    ];
    for c in ok {
        c.validate().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    }
}

#[test]
fn validate_rejects_out_of_range() {
    let d = SamplerConfig::default();
    let bad = [
        SamplerConfig { temp: f32::NAN, ..d.clone() },
        SamplerConfig { temp: f32::INFINITY, ..d.clone() },
        SamplerConfig { top_k: -1, ..d.clone() },
        SamplerConfig { top_p: 0.0, ..d.clone() },
        SamplerConfig { top_p: 1.01, ..d.clone() },
        SamplerConfig { top_p: f32::NAN, ..d.clone() },
        SamplerConfig { min_p: -0.1, ..d.clone() },
        SamplerConfig { min_p: 1.5, ..d.clone() },
        SamplerConfig { min_p: f32::NAN, ..d.clone() },
        SamplerConfig { typical_p: 0.0, ..d.clone() },
        SamplerConfig { typical_p: 2.0, ..d.clone() },
        SamplerConfig { repeat_penalty: 0.0, ..d.clone() },
        SamplerConfig { repeat_penalty: -1.0, ..d.clone() },
        SamplerConfig { repeat_penalty: f32::INFINITY, ..d.clone() },
        SamplerConfig { repeat_last_n: -2, ..d.clone() },
        SamplerConfig { presence_penalty: f32::NAN, ..d.clone() },
        SamplerConfig { frequency_penalty: f32::NEG_INFINITY, ..d.clone() },
        SamplerConfig { logit_bias: vec![LogitBias { token: 1, bias: f32::INFINITY }], ..d.clone() },
        SamplerConfig { logit_bias: vec![LogitBias { token: 1, bias: f32::NAN }], ..d.clone() },
    ];
    for c in bad {
        let e = c.validate().expect_err(&format!("{c:?}"));
        assert!(is_bad_input(&e), "{c:?}: {e}");
        let e = Sampler::new(c, 10).expect_err("new validates");
        assert!(is_bad_input(&e));
    }
}

#[test]
fn new_rejects_bias_outside_vocabulary() {
    let config = SamplerConfig { logit_bias: vec![LogitBias::parse("10+1").unwrap()], ..SamplerConfig::default() };
    let e = Sampler::new(config.clone(), 10).unwrap_err();
    assert!(is_bad_input(&e), "{e}");
    assert!(Sampler::new(config, 11).is_ok());
    assert!(is_bad_input(&Sampler::new(SamplerConfig::default(), 0).unwrap_err()));
}

#[test]
fn candidate_order_breaks_ties_by_id() {
    let a = Candidate { id: 1, logit: 0.0, p: 0.0 };
    let b = Candidate { id: 2, logit: -0.0, p: 0.0 };
    assert_eq!(ops::order(&a, &b), std::cmp::Ordering::Less);
    assert_eq!(ops::order(&b, &a), std::cmp::Ordering::Greater);
}

/// Per-token cost at a 262144-token vocabulary (run with `--ignored --nocapture`); the best of
/// several rounds, to see through a loaded machine.
#[test]
#[ignore]
fn bench_sample() {
    fn best_us(mut f: impl FnMut()) -> f64 {
        f();
        (0..15)
            .map(|_| {
                let t0 = std::time::Instant::now();
                for _ in 0..20 {
                    f();
                }
                t0.elapsed().as_secs_f64() * 1e6 / 20.0
            })
            .fold(f64::INFINITY, f64::min)
    }
    let n = 262_144;
    let mut rng = Xoshiro256::from_seed(1);
    let logits: Vec<f32> = (0..n).map(|_| (rng.next_f64() * 20.0 - 10.0) as f32).collect();
    let mut buf = Vec::with_capacity(n);
    eprintln!(
        "{:>22}: {:8.1} us",
        "memcpy",
        best_us(|| {
            buf.clear();
            buf.extend_from_slice(std::hint::black_box(&logits));
        })
    );
    eprintln!(
        "{:>22}: {:8.1} us",
        "argmax",
        best_us(|| {
            std::hint::black_box(ops::argmax(std::hint::black_box(&logits)));
        })
    );
    let mut c = Candidates::new();
    eprintln!("{:>22}: {:8.1} us", "fill_top_k 40", best_us(|| c.fill_top_k(std::hint::black_box(&logits), 40)));
    eprintln!(
        "{:>22}: {:8.1} us",
        "fill + top_k 40",
        best_us(|| {
            c.fill(std::hint::black_box(&logits));
            ops::top_k(&mut c, 40);
        })
    );
    for (name, config) in [
        ("greedy", SamplerConfig::greedy()),
        ("greedy+penalties", SamplerConfig { repeat_penalty: 1.1, ..SamplerConfig::greedy() }),
        ("default", cfg(1)),
        ("default+penalties", SamplerConfig { repeat_penalty: 1.1, ..cfg(1) }),
        ("top_k 0, top_p 0.95", SamplerConfig { top_k: 0, ..cfg(1) }),
    ] {
        let mut s = Sampler::new(config, n).unwrap();
        for t in 0..64 {
            s.accept(t * 7);
        }
        eprintln!(
            "{name:>22}: {:8.1} us/token",
            best_us(|| {
                std::hint::black_box(s.sample(&logits).unwrap());
            })
        );
    }
}
