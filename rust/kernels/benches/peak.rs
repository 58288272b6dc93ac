//! `cargo bench -p ferroquant-kernels --bench peak`: the peak int8 MAC rate of each instruction
//! mix on one core (independent chains, registers only) — the ceiling for each engine's kernel.

fn main() {
    #[cfg(target_arch = "x86_64")]
    {
        use ferroquant_kernels::arch::x86_64::peak::{run, PeakMix};
        println!("| instruction mix | peak int8 GMAC/s (1 core) |");
        println!("|---|---|");
        for (mix, name) in [
            (PeakMix::Vnni512, "AVX-512 VNNI vpdpbusd zmm"),
            (PeakMix::AvxVnni256, "AVX-VNNI vpdpbusd ymm"),
            (
                PeakMix::Avx2Saturating,
                "AVX2 vpmaddubsw+vpmaddwd+vpaddd (saturating, torch)",
            ),
            (
                PeakMix::Avx2Exact,
                "AVX2 vpmaddwd+vpaddd on i16 (exact, ferroquant avx2)",
            ),
        ] {
            let iters = 20_000_000;
            let mut best = f64::INFINITY;
            let mut macs = None;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                macs = run(mix, iters);
                best = best.min(t.elapsed().as_secs_f64());
            }
            match macs {
                Some(m) => println!("| {name} | {:.1} |", m as f64 / best / 1e9),
                None => println!("| {name} | not available on this CPU |"),
            }
        }
        // Several threads at once: what the machine's cores deliver together (on SMT siblings
        // or an oversubscribed host this is far below threads × the one-core peak).
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mix = if run(PeakMix::Vnni512, 1).is_some() {
            PeakMix::Vnni512
        } else {
            PeakMix::Avx2Exact
        };
        let iters = 20_000_000;
        let mut best = f64::INFINITY;
        let mut total = 0;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            let hs: Vec<_> = (0..threads)
                .map(|_| std::thread::spawn(move || run(mix, iters).unwrap_or(0)))
                .collect();
            total = hs.into_iter().map(|h| h.join().unwrap_or(0)).sum::<u64>();
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!(
            "| {mix:?} on {threads} threads at once (all cores together) | {:.1} |",
            total as f64 / best / 1e9
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("peak microbenchmarks exist for x86-64 only");
}
