#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanyard_fuzz::scep_pki_message(data));
