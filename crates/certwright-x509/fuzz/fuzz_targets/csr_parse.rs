//! Fuzz target: CSR, certificate and PEM bundle parsing must never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = certwright_x509::Csr::parse(data);
    let _ = certwright_x509::Certificate::from_der(data);
    if let Ok(certs) = certwright_x509::parse_pem_bundle(data) {
        let _ = certwright_x509::Chain::order(certs);
    }
});
