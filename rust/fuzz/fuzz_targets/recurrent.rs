#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferroquant_fuzz::targets::recurrent::run(data));
