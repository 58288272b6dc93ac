//! The fuzz targets on stable Rust, without libFuzzer or sanitizers: each target runs over
//! pseudo-random inputs (`FUZZ_REPLAY_CASES`, default 300), and over the files of
//! `FUZZ_REPLAY_DIR/<target>/` when that is set (e.g. a corpus or crash artifacts).

use ferroquant_fuzz::targets;

fn inputs(target: &str) -> Vec<Vec<u8>> {
    let cases: usize = std::env::var("FUZZ_REPLAY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut s = 0x9e37_79b9_7f4a_7c15u64 ^ target.len() as u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let mut v: Vec<Vec<u8>> = (0..cases)
        .map(|i| {
            let len = (next() % [8, 64, 512][i % 3]) as usize;
            (0..len).map(|_| next() as u8).collect()
        })
        .collect();
    // every first byte (the targets' mode selectors) at least once
    v.extend((0..=255u8).map(|b| vec![b]));
    if let Ok(dir) = std::env::var("FUZZ_REPLAY_DIR") {
        let d = std::path::Path::new(&dir).join(target);
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                v.push(std::fs::read(e.path()).unwrap());
            }
        }
    }
    v
}

macro_rules! replay {
    ($name:ident) => {
        #[test]
        fn $name() {
            for (i, data) in inputs(stringify!($name)).iter().enumerate() {
                let r = std::panic::catch_unwind(|| targets::$name::run(data));
                if r.is_err() {
                    panic!("{} failed on input {i}: {:02x?}", stringify!($name), data);
                }
            }
        }
    };
}

replay!(pack);
replay!(gemm);
replay!(conv);
replay!(requantize);
replay!(quantize);
replay!(elementwise);
replay!(recurrent);
