//! `cargo bench -p ferroquant-kernels --bench quantize`: quantize / dequantize throughput.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferroquant_kernels::quantize::{dequantize_per_tensor, quantize_per_tensor};

fn bench_quantize(c: &mut Criterion) {
    let n = 1 << 20;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
        .collect();
    let mut q = vec![0u8; n];
    let mut d = vec![0f32; n];
    let mut g = c.benchmark_group("quantize");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("quantize_per_tensor_u8", |b| {
        b.iter(|| quantize_per_tensor(&x, 0.04, 128, 0, 255, &mut q).unwrap())
    });
    g.bench_function("dequantize_per_tensor_u8", |b| {
        b.iter(|| dequantize_per_tensor(&q, 0.04, 128, &mut d).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench_quantize);
criterion_main!(benches);
