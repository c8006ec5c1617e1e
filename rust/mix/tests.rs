//! Properties of the schedule and the sampler, checked against brute-force enumeration and
//! an independent (float) statement of the ramp.

use std::collections::{BTreeMap, HashMap, HashSet};

use proptest::prelude::*;

use super::schedule::{windows_in, CorpusSize, Schedule, StageSpec};
use crate::error::Error;

fn stage(name: &str, tokens: u64, batch_tokens: u64, w: &[(&str, f64)], ramp: u64) -> StageSpec {
    StageSpec {
        name: name.into(),
        tokens,
        batch_tokens,
        weights: w.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ramp_tokens: ramp,
    }
}

fn corpus(name: &str, tokens: u64) -> CorpusSize {
    CorpusSize {
        name: name.into(),
        tokens,
    }
}

/// The TinyLlama v1.1 chinese schedule over corpora of realistic size (SlimPajama without
/// GitHub ~ 600B tokens, SkyPile ~ 150B).
fn chinese() -> Schedule {
    Schedule::new(
        2048,
        3407,
        vec![
            corpus("slimpajama", 600_000_000_000),
            corpus("skypile", 150_000_000_000),
        ],
        vec![
            stage(
                "basic",
                1_500_000_000_000,
                1_800_000,
                &[("slimpajama", 1.0)],
                0,
            ),
            stage(
                "continual",
                350_000_000_000,
                1_800_000,
                &[("slimpajama", 0.5), ("skypile", 0.5)],
                6_000_000_000,
            ),
            stage(
                "cooldown",
                150_000_000_000,
                7_200_000,
                &[("slimpajama", 0.5), ("skypile", 0.5)],
                0,
            ),
        ],
    )
    .expect("valid schedule")
}

#[test]
fn windows_tile_the_stream() {
    assert_eq!(windows_in(0, 4), 0);
    assert_eq!(windows_in(4, 4), 0);
    assert_eq!(windows_in(5, 4), 1);
    assert_eq!(windows_in(9, 4), 2);
    assert_eq!(windows_in(12, 4), 2);
}

#[test]
fn chinese_schedule_shape_and_direct_locate() {
    // How fast a step is located is measured by benchmarks/loader.py, not asserted here.
    let s = chinese();
    // 1.8M tokens -> 879 sequences (878.9 rounded), 7.2M -> 3516 (3515.6 rounded).
    let basic = s.stage_steps(0).unwrap();
    let continual = s.stage_steps(1).unwrap();
    let cooldown = s.stage_steps(2).unwrap();
    assert_eq!(
        basic.end - basic.start,
        1_500_000_000_000u64.div_ceil(879 * 2048)
    );
    assert_eq!(continual.start, basic.end);
    assert_eq!(s.batch_sequences(0).unwrap(), 879);
    assert_eq!(s.batch_sequences(cooldown.start).unwrap(), 3516);
    assert_eq!(s.num_steps(), cooldown.end);
    // Ramp: 6B tokens at 879*2048 per step.
    let ramp_steps = 6_000_000_000u64.div_ceil(879 * 2048);
    let w = s.weights_at(continual.start).unwrap();
    assert_eq!(w, vec![1.0, 0.0]);
    let mid = s.weights_at(continual.start + ramp_steps / 2).unwrap();
    assert!((mid[1] - 0.25).abs() < 1e-3, "{mid:?}");
    assert_eq!(
        s.weights_at(continual.start + ramp_steps).unwrap(),
        vec![0.5, 0.5]
    );

    let batch = s.batch(700_000).unwrap();
    assert_eq!(batch.len(), 879);
    assert!(batch.iter().all(|x| x.corpus == 0));
    // Steps deep in the ramp, after it and the very last one are located directly (no replay)
    // and carry the batch size of their stage.
    for (step, n) in [
        (continual.start + ramp_steps / 2 + 37, 879),
        (continual.start + ramp_steps + 5, 879),
        (s.num_steps() - 1, 3516),
    ] {
        assert_eq!(s.batch(step).unwrap().len(), n, "step {step}");
    }

    // Cursors inside the ramp (checkpoint + partial block) agree with summing every step.
    let mut running = s.cursors_at(continual.start).unwrap();
    for step in continual.start..continual.start + ramp_steps + 3 {
        assert_eq!(s.cursors_at(step).unwrap(), running, "step {step}");
        for (r, c) in running.iter_mut().zip(s.counts_at(step).unwrap()) {
            *r += c;
        }
    }

    // Epochs: slimpajama draws 1.5T + half of 500B tokens over 600B-token epochs.
    let e = s.epochs();
    let cur = s.cursors_at(s.num_steps()).unwrap();
    assert_eq!(e[0], cur[0].div_ceil(s.windows()[0]));
    assert!(e[0] >= 3 && e[1] >= 2, "{e:?}");
}

#[test]
fn ramp_follows_the_linear_formula() {
    let s = Schedule::new(
        4,
        1,
        vec![corpus("a", 1000), corpus("b", 1000)],
        vec![
            stage("one", 40, 8, &[("a", 1.0)], 0),
            stage("two", 400, 16, &[("a", 0.2), ("b", 0.8)], 160),
        ],
    )
    .unwrap();
    let two = s.stage_steps(1).unwrap();
    for step in two.clone() {
        let t = (step - two.start) as f64 * 16.0;
        let f = (t / 160.0).min(1.0);
        let w = s.weights_at(step).unwrap();
        assert!((w[1] - 0.8 * f).abs() < 1e-12, "step {step}: {w:?}");
    }
}

#[test]
fn bad_schedules_name_the_key() {
    let c = || vec![corpus("a", 10_000), corpus("b", 10_000), corpus("tiny", 3)];
    let cases: Vec<(Vec<StageSpec>, &str)> = vec![
        (
            vec![stage("x", 100, 16, &[("a", 0.5), ("b", 0.4)], 0)],
            "stages[0].weights: sum to 0.9",
        ),
        (
            vec![
                stage("x", 100, 16, &[("a", 1.0)], 0),
                stage("y", 100, 16, &[("a", 1.0)], 0),
                stage("z", 100, 16, &[("a", 0.5), ("foo", 0.5)], 0),
            ],
            "stages[2].weights.foo: unknown corpus",
        ),
        (
            vec![stage("x", 100, 3, &[("a", 1.0)], 0)],
            "stages[0].batch_tokens: 3 is smaller than one sequence",
        ),
        (
            vec![stage("x", 0, 16, &[("a", 1.0)], 0)],
            "stages[0].tokens: must be > 0",
        ),
        (
            vec![stage("x", 100, 16, &[("a", 0.5), ("tiny", 0.5)], 0)],
            "stages[0].weights.tiny: corpus has 3 tokens",
        ),
        (
            vec![stage("x", 100, 16, &[("a", 1.5), ("b", -0.5)], 0)],
            "stages[0].weights.b: -0.5 is not a weight",
        ),
        (
            vec![stage("x", 100, 16, &[("a", f64::NAN)], 0)],
            "stages[0].weights.a: NaN is not a weight",
        ),
        (
            vec![stage("x", 100, 16, &[("a", 1.0)], 8)],
            "stages[0].ramp_tokens: the first stage",
        ),
        (
            vec![
                stage("x", 100, 16, &[("a", 1.0)], 0),
                stage("y", 100, 16, &[("b", 1.0)], 200),
            ],
            "stages[1].ramp_tokens: 200 exceeds",
        ),
        (vec![], "stages: at least one stage"),
        (
            vec![stage("x", 1 << 40, 1 << 40, &[("a", 1.0)], 0)],
            "stages[0].batch_tokens: 274877906944 sequences per batch",
        ),
        (
            vec![
                stage("x", 100, 16, &[("a", 1.0)], 0),
                stage("y", 1 << 40, 4, &[("b", 1.0)], 1 << 40),
            ],
            "stages[1].ramp_tokens: the ramp spans",
        ),
    ];
    for (stages, want) in cases {
        match Schedule::new(4, 0, c(), stages) {
            Err(Error::Spec(msg)) => assert!(msg.contains(want), "{msg:?} lacks {want:?}"),
            other => panic!("expected Spec error containing {want:?}, got {other:?}"),
        }
    }
    let dup = Schedule::new(
        4,
        0,
        vec![corpus("a", 100), corpus("a", 100)],
        vec![stage("x", 100, 16, &[("a", 1.0)], 0)],
    );
    assert!(matches!(dup, Err(Error::Spec(m)) if m.contains("corpora.a: defined twice")));
    let s = Schedule::new(4, 0, c(), vec![stage("x", 40, 12, &[("a", 1.0)], 0)]).unwrap();
    match s.rank_slice(0, 0, 2) {
        Err(Error::Spec(m)) => assert!(m.contains("stages[0].batch_tokens"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(s.batch(s.num_steps()).is_err());
    assert!(s.rank_slice(0, 3, 3).is_err());
    assert!(Schedule::from_json("{\"format\": 1}").is_err());
}

#[test]
fn json_round_trip_is_byte_identical() {
    let s = Schedule::new(
        8,
        99,
        vec![corpus("a", 5000), corpus("b", 777), corpus("c", 300)],
        vec![
            stage(
                "one",
                400,
                32,
                &[("a", 1.0 / 3.0), ("b", 1.0 / 3.0), ("c", 1.0 / 3.0)],
                0,
            ),
            stage("two", 800, 64, &[("a", 0.1), ("b", 0.2), ("c", 0.7)], 300),
        ],
    )
    .unwrap();
    let json = s.to_json();
    let back = Schedule::from_json(&json).unwrap();
    assert_eq!(back.to_json(), json);
    for step in 0..s.num_steps() {
        assert_eq!(s.batch(step).unwrap(), back.batch(step).unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schedule.json");
    s.save(&path).unwrap();
    assert_eq!(Schedule::load(&path).unwrap().to_json(), json);
    let tampered = json.replace("\"num_steps\": ", "\"num_steps\": 1");
    assert!(Schedule::from_json(&tampered).is_err());
}

/// A random small schedule: 1-4 corpora (the first always has windows), 1-4 stages of
/// 1-60 steps, batches that need rounding, token budgets that need a ceiling, ramps.
fn small_schedule() -> impl Strategy<Value = Schedule> {
    (1u32..9, any::<u64>(), 1usize..5, 1usize..5).prop_flat_map(|(seq, seed, nc, ns)| {
        let seq64 = seq as u64;
        let first = (seq64 + 1)..400;
        let others = prop::collection::vec(0u64..400, nc - 1);
        let stage = (
            1u64..60,                           // steps
            1u64..6,                            // batch in sequences
            0u64..seq64.div_ceil(2),            // batch jitter (rounds back down)
            any::<u64>(),                       // token budget shortfall (ceil)
            prop::collection::vec(0u32..5, nc), // raw weights
            0u64..=100,                         // ramp, percent of the stage
        );
        (first, others, prop::collection::vec(stage, ns)).prop_map(
            move |(first, others, stages)| {
                let sizes: Vec<u64> = std::iter::once(first).chain(others).collect();
                let names: Vec<String> = (0..nc).map(|i| format!("c{i}")).collect();
                let corpora = names
                    .iter()
                    .zip(&sizes)
                    .map(|(n, &t)| CorpusSize {
                        name: n.clone(),
                        tokens: t,
                    })
                    .collect();
                let mut specs = Vec::new();
                for (i, (steps, b, jitter, short, raw, pct)) in stages.into_iter().enumerate() {
                    // Only corpora with windows may weigh.
                    let mut raw: Vec<u32> = raw
                        .iter()
                        .zip(&sizes)
                        .map(|(&w, &t)| if windows_in(t, seq) == 0 { 0 } else { w })
                        .collect();
                    if raw.iter().all(|&w| w == 0) {
                        raw[0] = 1;
                    }
                    let sum: u32 = raw.iter().sum();
                    let step_tokens = b * seq64;
                    let tokens = steps * step_tokens - short % step_tokens;
                    specs.push(StageSpec {
                        name: format!("s{i}"),
                        tokens,
                        batch_tokens: step_tokens + jitter,
                        weights: names
                            .iter()
                            .zip(&raw)
                            .filter(|(_, &w)| w > 0)
                            .map(|(n, &w)| (n.clone(), w as f64 / sum as f64))
                            .collect(),
                        ramp_tokens: if i == 0 { 0 } else { tokens * pct / 100 },
                    });
                }
                Schedule::new(seq, seed, corpora, specs).expect("generated schedule is valid")
            },
        )
    })
}

/// Weights at a step computed independently in floating point from the locked stages.
fn float_weights(s: &Schedule, step: u64) -> Vec<f64> {
    let names: Vec<&str> = s.corpora().iter().map(|c| c.name.as_str()).collect();
    let of = |st: &StageSpec| -> Vec<f64> {
        names
            .iter()
            .map(|n| st.weights.get(*n).copied().unwrap_or(0.0))
            .collect()
    };
    let si = s.stage_of(step).unwrap();
    let st = &s.stages()[si];
    let next = of(st);
    if st.ramp_tokens == 0 {
        return next;
    }
    let prev = of(&s.stages()[si - 1]);
    let t =
        s.tokens_before(step).unwrap() - s.tokens_before(s.stage_steps(si).unwrap().start).unwrap();
    let f = (t as f64 / st.ramp_tokens as f64).min(1.0);
    prev.iter()
        .zip(&next)
        .map(|(p, n)| p + (n - p) * f)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_step_matches_its_weights_and_cursors_add_up(s in small_schedule()) {
        let nc = s.corpora().len();
        let mut running = vec![0u64; nc];
        for step in 0..s.num_steps() {
            prop_assert_eq!(s.cursors_at(step).unwrap(), running.clone(), "step {}", step);
            let counts = s.counts_at(step).unwrap();
            let n = s.batch_sequences(step).unwrap();
            let st = &s.stages()[s.stage_of(step).unwrap()];
            let seq = s.seq_len() as u64;
            let want_n = (st.batch_tokens + seq / 2) / seq;
            prop_assert_eq!(n, want_n);
            prop_assert_eq!(counts.iter().sum::<u64>(), n);
            let w = float_weights(&s, step);
            for c in 0..nc {
                let quota = n as f64 * w[c];
                prop_assert!((counts[c] as f64 - quota).abs() < 1.0 + 1e-6,
                    "step {} corpus {} count {} quota {}", step, c, counts[c], quota);
            }
            // The batch holds exactly those counts.
            let batch = s.batch(step).unwrap();
            let mut by_corpus = vec![0u64; nc];
            for x in &batch {
                by_corpus[x.corpus as usize] += 1;
            }
            prop_assert_eq!(&by_corpus, &counts);
            for (r, c) in running.iter_mut().zip(&counts) {
                *r += c;
            }
        }
        prop_assert_eq!(s.cursors_at(s.num_steps()).unwrap(), running);
    }

    #[test]
    fn epochs_are_permutations_without_repeats(s in small_schedule()) {
        let nc = s.corpora().len();
        // (corpus, epoch) -> windows, in delivery order.
        let mut seen: BTreeMap<(u32, u64), Vec<u64>> = BTreeMap::new();
        for step in 0..s.num_steps() {
            for x in s.batch(step).unwrap() {
                prop_assert!(x.window < s.windows()[x.corpus as usize]);
                seen.entry((x.corpus, x.epoch)).or_default().push(x.window);
            }
        }
        let mut max_epoch = vec![None::<u64>; nc];
        for (&(c, e), ws) in &seen {
            let set: HashSet<u64> = ws.iter().copied().collect();
            prop_assert_eq!(set.len(), ws.len(), "corpus {} epoch {} repeats a window", c, e);
            max_epoch[c as usize] = Some(e);
        }
        let epochs = s.epochs();
        for c in 0..nc {
            let brute = max_epoch[c].map_or(0, |e| e + 1);
            prop_assert_eq!(epochs[c], brute, "corpus {}", c);
            // Every epoch but the last is complete (a permutation of all windows).
            for e in 0..brute.saturating_sub(1) {
                let n = seen.get(&(c as u32, e)).map_or(0, |v| v.len() as u64);
                prop_assert_eq!(n, s.windows()[c], "corpus {} epoch {} incomplete", c, e);
            }
        }
    }

    #[test]
    fn rank_slices_reassemble_the_batch(s in small_schedule()) {
        for step in 0..s.num_steps() {
            let full = s.batch(step).unwrap();
            prop_assert_eq!(&s.batch(step).unwrap(), &full);
            for world in [1u32, 2, 4, 8] {
                if full.len() % world as usize != 0 {
                    prop_assert!(s.rank_slice(step, 0, world).is_err());
                    continue;
                }
                let mut joined = Vec::new();
                for rank in 0..world {
                    joined.extend(s.rank_batch(step, rank, world).unwrap());
                }
                prop_assert_eq!(&joined, &full);
            }
        }
    }
}

#[test]
fn epochs_are_fresh_permutations_in_order() {
    // One corpus of 10 windows, 4 per step: draws follow perm_0 then perm_1 ...
    let s = Schedule::new(
        2,
        5,
        vec![corpus("a", 21)],
        vec![stage("x", 2 * 4 * 15, 8, &[("a", 1.0)], 0)],
    )
    .unwrap();
    assert_eq!(s.windows(), &[10]);
    let mut per_epoch: HashMap<u64, Vec<u64>> = HashMap::new();
    for step in 0..s.num_steps() {
        let mut b = s.batch(step).unwrap();
        b.sort();
        for x in b {
            per_epoch.entry(x.epoch).or_default().push(x.window);
        }
    }
    assert_eq!(s.epochs(), vec![6]);
    let orders: Vec<Vec<u64>> = (0..6)
        .map(|e| {
            let p = s.epoch_permutation(0, e);
            (0..10).map(|i| p.apply(i)).collect()
        })
        .collect();
    assert!(
        orders.windows(2).any(|w| w[0] != w[1]),
        "epochs reuse one order"
    );
    for e in 0..6u64 {
        let mut got = per_epoch[&e].clone();
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<_>>(), "epoch {e}");
    }
}

#[test]
fn batch_order_mixes_corpora_across_ranks() {
    let s = chinese();
    let cooldown = s.stage_steps(2).unwrap();
    let step = cooldown.start + 10;
    let batch = s.batch(step).unwrap();
    // 3516 / 4 ranks: each slice about half skypile.
    for rank in 0..4 {
        let slice = s.rank_slice(step, rank, 4).unwrap();
        let sky = batch[slice.clone()]
            .iter()
            .filter(|x| x.corpus == 1)
            .count();
        let frac = sky as f64 / slice.len() as f64;
        assert!((frac - 0.5).abs() < 0.1, "rank {rank}: {frac}");
    }
}

/// (corpus name, epoch, window) of a batch: comparable across schedules that list their
/// corpora differently.
fn named(s: &Schedule, step: u64) -> Vec<(String, u64, u64)> {
    s.batch(step)
        .unwrap()
        .into_iter()
        .map(|x| {
            (
                s.corpora()[x.corpus as usize].name.clone(),
                x.epoch,
                x.window,
            )
        })
        .collect()
}

#[test]
fn streams_are_keyed_by_name_not_position() {
    // A SlimPajama-only mix and a two-corpus mix listing skypile first (or second): while only
    // slimpajama weighs, every batch is the same windows (issue: a branch listing its corpora
    // in another order re-read windows the trunk had trained on).
    let basic = |w: &[(&str, f64)]| vec![stage("basic", 8 * 4 * 40, 8 * 4, w, 0)];
    let alone = Schedule::new(8, 3407, vec![corpus("sp", 1001)], basic(&[("sp", 1.0)])).unwrap();
    for corpora in [
        vec![corpus("sky", 500), corpus("sp", 1001)],
        vec![corpus("sp", 1001), corpus("sky", 500)],
    ] {
        let other = Schedule::new(8, 3407, corpora, basic(&[("sp", 1.0)])).unwrap();
        assert_eq!(other.num_steps(), alone.num_steps());
        for step in 0..alone.num_steps() {
            assert_eq!(named(&other, step), named(&alone, step), "step {step}");
        }
    }
    // And the seed still matters.
    let reseeded = Schedule::new(8, 1, vec![corpus("sp", 1001)], basic(&[("sp", 1.0)])).unwrap();
    assert_ne!(named(&reseeded, 0), named(&alone, 0));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A family: the trunk is the first `k` stages, a branch is all of them. The branch's
    /// batches equal the trunk's at every trunk step, and the trunk's steps followed by the
    /// branch's from the branch point on never draw a window twice within an epoch of a
    /// corpus and skip none (every epoch but the last complete), across stages, ramps,
    /// batch-size changes and epochs.
    #[test]
    fn trunk_then_branch_is_the_branch_straight_through(s in small_schedule(), cut in 0usize..4) {
        let n = s.stages().len();
        prop_assume!(n >= 2);
        let k = 1 + cut % (n - 1);
        let trunk = Schedule::new(s.seq_len(), s.seed(), s.corpora().to_vec(),
                                  s.stages()[..k].to_vec()).unwrap();
        let branch_point = trunk.num_steps();
        prop_assert_eq!(branch_point, s.stage_steps(k).unwrap().start);
        prop_assert_eq!(trunk.cursors_at(branch_point).unwrap(), s.cursors_at(branch_point).unwrap());
        let mut seen: BTreeMap<(u32, u64), Vec<u64>> = BTreeMap::new();
        for step in 0..s.num_steps() {
            let batch = if step < branch_point {
                let t = trunk.batch(step).unwrap();
                prop_assert_eq!(&t, &s.batch(step).unwrap(), "step {}", step);
                t
            } else {
                s.batch(step).unwrap()
            };
            for x in batch {
                seen.entry((x.corpus, x.epoch)).or_default().push(x.window);
            }
        }
        let last_epoch: HashMap<u32, u64> = seen.keys().fold(HashMap::new(), |mut m, &(c, e)| {
            let v = m.entry(c).or_insert(e);
            *v = (*v).max(e);
            m
        });
        for (&(c, e), ws) in &seen {
            let set: HashSet<u64> = ws.iter().copied().collect();
            prop_assert_eq!(set.len(), ws.len(), "corpus {} epoch {} repeats a window", c, e);
            if e < last_epoch[&c] {
                prop_assert_eq!(ws.len() as u64, s.windows()[c as usize],
                                "corpus {} epoch {} skips windows", c, e);
            }
        }
    }
}
