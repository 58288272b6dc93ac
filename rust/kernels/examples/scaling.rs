//! Thread scaling of the int8 GEMM, and a check that every thread count gives the same bits.
//!
//!     cargo run --release -p ferroquant-kernels --example scaling [-- max_threads]
//!
//! Static and dynamic Linear at M=128, K=768, N=3072 on the best engine, 1..=max_threads.

use std::time::Instant;

use ferroquant_kernels::{best_engine, linear_dynamic, linear_static, PackedWeights};

fn median_secs(mut f: impl FnMut()) -> f64 {
    f();
    let mut v: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..5 {
                f();
            }
            t.elapsed().as_secs_f64() / 5.0
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let max_threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let (m, k, n) = (128usize, 768usize, 3072usize);
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let a: Vec<u8> = (0..m * k).map(|i| (i * 31 % 256) as u8).collect();
    let w: Vec<i8> = (0..n * k).map(|i| ((i * 131) % 255) as i32 as i8).collect();
    let scales: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 1e-5).collect();
    let pw = PackedWeights::new(&w, n, k, &scales, &vec![0; n]).unwrap();
    let e = best_engine();
    println!("engine {}, M={m} K={k} N={n}", e.name());
    println!("| threads | static GMAC/s | speedup | dynamic GMAC/s | speedup |");
    println!("|---|---|---|---|---|");
    let (mut base_s, mut base_d) = (0.0, 0.0);
    let mut ref_q: Option<Vec<u8>> = None;
    let mut ref_f: Option<Vec<u32>> = None;
    let mut threads = 1;
    while threads <= max_threads {
        let mut q = vec![0u8; m * n];
        let mut f = vec![0f32; m * n];
        let ts = median_secs(|| {
            linear_static(
                e, &a, m, 0.02, 3, &pw, None, 0.5, 10, 0, 255, false, &mut q, threads,
            )
            .unwrap()
        });
        let td = median_secs(|| {
            linear_dynamic(e, &x, m, &pw, None, false, false, &mut f, threads).unwrap();
        });
        let bits: Vec<u32> = f.iter().map(|v| v.to_bits()).collect();
        assert_eq!(
            ref_q.get_or_insert_with(|| q.clone()),
            &q,
            "static output differs at {threads} threads"
        );
        assert_eq!(
            ref_f.get_or_insert_with(|| bits.clone()),
            &bits,
            "dynamic output differs at {threads} threads"
        );
        let (gs, gd) = ((m * k * n) as f64 / ts / 1e9, (m * k * n) as f64 / td / 1e9);
        if threads == 1 {
            (base_s, base_d) = (gs, gd);
        }
        println!(
            "| {threads} | {gs:.1} | {:.2}x | {gd:.1} | {:.2}x |",
            gs / base_s,
            gd / base_d
        );
        threads = if threads < 2 { 2 } else { threads * 2 };
    }
    println!("outputs identical for every thread count");
}
