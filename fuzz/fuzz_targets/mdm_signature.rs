#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanyard_fuzz::mdm_signature(data));
