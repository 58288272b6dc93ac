//! Times a target on given inputs: `cargo run --release --example probe -- TARGET HEX...`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let target = &args[1];
    for hex in &args[2..] {
        let d: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let t = std::time::Instant::now();
        match target.as_str() {
            "pack" => ferroquant_fuzz::targets::pack::run(&d),
            "gemm" => ferroquant_fuzz::targets::gemm::run(&d),
            "conv" => ferroquant_fuzz::targets::conv::run(&d),
            "requantize" => ferroquant_fuzz::targets::requantize::run(&d),
            _ => ferroquant_fuzz::targets::quantize::run(&d),
        }
        eprintln!("{target} {hex}: {:?}", t.elapsed());
    }
}
