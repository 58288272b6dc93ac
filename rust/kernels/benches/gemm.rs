//! `cargo bench -p ferroquant-kernels --bench gemm`: int8 Linear GEMMs on every engine this
//! CPU has, one thread, shapes from shared/design/ANCHORS.md. Throughput is in MACs.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferroquant_kernels::{available_engines, linear_dynamic, linear_static, PackedWeights};

fn data(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<u8>, PackedWeights) {
    let x: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let a: Vec<u8> = (0..m * k).map(|i| (i * 31 % 256) as u8).collect();
    let w: Vec<i8> = (0..n * k).map(|i| ((i * 131) % 255) as i32 as i8).collect();
    let scales: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 1e-5).collect();
    let pw = PackedWeights::new(&w, n, k, &scales, &vec![0; n]).unwrap();
    (x, a, pw)
}

fn bench_linear(c: &mut Criterion) {
    let shapes = [
        (1, 768, 3072),
        (16, 768, 3072),
        (128, 768, 3072),
        (512, 1024, 1024),
    ];
    for &(m, k, n) in &shapes {
        let (x, a, pw) = data(m, k, n);
        // torch's x86 activation range (reduce_range): AVX2 runs its vpmaddubsw kernel
        let a7: Vec<u8> = a.iter().map(|&v| v & 127).collect();
        let mut g = c.benchmark_group(format!("linear/{m}x{k}x{n}"));
        g.throughput(Throughput::Elements((m * k * n) as u64));
        g.sample_size(10);
        for e in available_engines() {
            let mut out_f = vec![0f32; m * n];
            g.bench_function(BenchmarkId::new("dynamic", e.name()), |b| {
                b.iter(|| linear_dynamic(e, &x, m, &pw, None, false, false, &mut out_f, 1).unwrap())
            });
            let mut out_q = vec![0u8; m * n];
            g.bench_function(BenchmarkId::new("static", e.name()), |b| {
                b.iter(|| {
                    linear_static(
                        e, &a, m, 0.02, 3, &pw, None, 0.5, 10, 0, 255, false, &mut out_q, 1,
                    )
                    .unwrap()
                })
            });
            g.bench_function(BenchmarkId::new("static_0to127", e.name()), |b| {
                b.iter(|| {
                    linear_static(
                        e, &a7, m, 0.02, 3, &pw, None, 0.5, 10, 0, 255, false, &mut out_q, 1,
                    )
                    .unwrap()
                })
            });
            g.bench_function(BenchmarkId::new("dynamic_0to127", e.name()), |b| {
                b.iter(|| linear_dynamic(e, &x, m, &pw, None, true, false, &mut out_f, 1).unwrap())
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench_linear);
criterion_main!(benches);
