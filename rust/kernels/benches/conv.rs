//! `cargo bench -p ferroquant-kernels --bench conv [-- filter]`: static int8 convolutions on
//! every engine this CPU has, one thread, batch 1, channels-last u8 activations in 0..127 and
//! symmetric per-channel weights (torch's x86 qconfig): the shapes of the convolution issue,
//! MobileNetV2's depthwise layers and stem, and grouped convs (ResNeXt-style). Throughput is in MACs.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferroquant_kernels::available_engines;
use ferroquant_kernels::conv::{conv_static, ConvGeometry, PackedConv};

/// (name, cin, cout, size, kernel, stride, groups)
const SHAPES: [(&str, usize, usize, usize, usize, usize, usize); 13] = [
    ("3x3_64_56", 64, 64, 56, 3, 1, 1),
    ("3x3_256_14", 256, 256, 14, 3, 1, 1),
    ("1x1_128x512_28", 128, 512, 28, 1, 1, 1),
    ("7x7s2_stem_224", 3, 64, 224, 7, 2, 1),
    ("3x3s2_stem_224", 3, 32, 224, 3, 2, 1),
    ("dw3x3_32_112", 32, 32, 112, 3, 1, 32),
    ("dw3x3s2_96_112", 96, 96, 112, 3, 2, 96),
    ("dw3x3_144_56", 144, 144, 56, 3, 1, 144),
    ("dw3x3_576_14", 576, 576, 14, 3, 1, 576),
    ("dw3x3_960_7", 960, 960, 7, 3, 1, 960),
    ("dw5x5_240_14", 240, 240, 14, 5, 1, 240),
    ("g32_3x3_128_56", 128, 128, 56, 3, 1, 32),
    ("g8_3x3_64_56", 64, 64, 56, 3, 1, 8),
];

fn bench_conv(c: &mut Criterion) {
    for &(name, cin, cout, size, k, stride, groups) in &SHAPES {
        let geom = ConvGeometry {
            kernel: [1, k, k],
            stride: [1, stride, stride],
            padding: [0, k / 2, k / 2],
            dilation: [1, 1, 1],
            groups,
        };
        let x: Vec<u8> = (0..size * size * cin)
            .map(|i| (i * 31 % 128) as u8)
            .collect();
        let wn = cout * cin / groups * k * k;
        let w: Vec<i8> = (0..wn).map(|i| ((i * 131) % 255) as i32 as i8).collect();
        let scales: Vec<f32> = (0..cout).map(|j| 0.01 + j as f32 * 1e-5).collect();
        let pc = PackedConv::new(&w, cout, cin, geom, &scales, &vec![0; cout]).unwrap();
        let osp = geom.output_size([1, size, size]).unwrap();
        let macs = osp.iter().product::<usize>() * cout * cin / groups * k * k;
        let mut g = c.benchmark_group(format!("conv/{name}"));
        g.throughput(Throughput::Elements(macs as u64));
        g.sample_size(20);
        for e in available_engines() {
            g.bench_function(BenchmarkId::from_parameter(e.name()), |b| {
                b.iter(|| {
                    conv_static::<u8>(
                        e,
                        &x,
                        1,
                        [1, size, size],
                        0.02,
                        3,
                        &pc,
                        None,
                        0.5,
                        10,
                        0,
                        255,
                        true,
                        1,
                    )
                    .unwrap()
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench_conv);
criterion_main!(benches);
