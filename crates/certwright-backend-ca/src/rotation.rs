//! A local CA in rotation: the current CA (`spec.ca.secretName`) and the next one, in
//! three phases. `Distribute` signs with the current CA and publishes both roots;
//! `Switch` signs with the next and publishes both; `Retire` signs with the next and
//! publishes its root only. `Retire` is held at `Switch` until the certificates issued
//! under the current CA's trust anchor have expired: the engine records until when
//! before each signature ([`IssuanceRecords`]), the rotation asks at each call, and so
//! moves on by itself at that time, and back should an earlier build of the issuer
//! still sign with the current CA.

use std::time::SystemTime;

use certwright_x509::Certificate;

use super::LocalCa;
use certwright_pki::{
    Backend, CaCertificates, Error, Health, IssuanceRecords, Outcome, Recovery, RotationPhase,
    RotationState, SignRequest,
};

/// Two local CAs and the phase of the rotation from the first to the second.
#[derive(Debug)]
pub struct RotatingCa {
    current: LocalCa,
    next: LocalCa,
    requested: RotationPhase,
    /// The issuer's issuance records; `None`: none are kept, and `Retire` waits for
    /// nothing.
    records: Option<std::sync::Arc<dyn IssuanceRecords>>,
}

impl RotatingCa {
    /// A rotation from `current` to `next`, in `phase`. `records` say until when the
    /// certificates issued under each trust anchor are valid: `Retire` waits for those
    /// of the current CA's anchor.
    ///
    /// # Errors
    /// [`Error::Misconfigured`] when both are the same CA certificate.
    pub fn new(
        current: LocalCa,
        next: LocalCa,
        phase: RotationPhase,
        records: Option<std::sync::Arc<dyn IssuanceRecords>>,
    ) -> Result<RotatingCa, Error> {
        if current.certificate().der() == next.certificate().der() {
            return Err(Error::misconfigured(
                "the next CA of the rotation is the current CA: give it a new CA certificate",
            ));
        }
        Ok(RotatingCa {
            current,
            next,
            requested: phase,
            records,
        })
    }

    /// Until when certificates issued under the current CA's trust anchor are valid;
    /// nothing when both CAs share it (Retire then drops no anchor).
    fn current_issued_until(&self) -> Option<SystemTime> {
        if !self.retire_drops_an_anchor() {
            return None;
        }
        let anchor = self.current.trust_anchor().fingerprint_hex();
        self.records.as_ref()?.issued_until(&anchor)
    }

    /// Whether `Retire` drops a trust anchor: not when both CAs share one.
    fn retire_drops_an_anchor(&self) -> bool {
        self.current.trust_anchor() != self.next.trust_anchor()
    }

    /// The phase in effect at `now`: the one asked for, except `Retire` while
    /// certificates issued under the current CA's trust anchor are valid, which is held
    /// at `Switch`.
    pub fn phase_at(&self, now: SystemTime) -> RotationPhase {
        match self.requested {
            RotationPhase::Retire
                if self.retire_drops_an_anchor()
                    && self.current_issued_until().is_some_and(|t| t > now) =>
            {
                RotationPhase::Switch
            }
            phase => phase,
        }
    }

    /// The CA that signs at `now`.
    fn signer(&self, now: SystemTime) -> &LocalCa {
        match self.phase_at(now) {
            RotationPhase::Distribute => &self.current,
            // Switch and Retire; a phase this version does not know signs with the next.
            _ => &self.next,
        }
    }

    /// What relying parties should trust at `now`.
    fn trust_at(&self, now: SystemTime) -> Vec<Certificate> {
        let mut trust = match self.phase_at(now) {
            RotationPhase::Retire => vec![self.next.trust_anchor().clone()],
            // Distribute and Switch, and a phase this version does not know.
            _ => vec![
                self.current.trust_anchor().clone(),
                self.next.trust_anchor().clone(),
            ],
        };
        trust.dedup();
        trust
    }
}

#[async_trait::async_trait]
impl Backend for RotatingCa {
    fn kind(&self) -> &'static str {
        "ca"
    }

    async fn sign(&self, request: &SignRequest) -> Result<Outcome, Error> {
        self.signer(SystemTime::now()).sign(request).await
    }

    async fn poll(&self, pending_id: &str, request: &SignRequest) -> Result<Outcome, Error> {
        self.next.poll(pending_id, request).await
    }

    /// The CA that signs must be usable; so must the next one while it is being
    /// distributed (it signs from the switch on).
    async fn check(&self) -> Result<Health, Error> {
        let now = SystemTime::now();
        let phase = self.phase_at(now);
        // Both at once while distributing: one check's time, not two.
        let signing = if phase == RotationPhase::Distribute {
            let (signing, next) = tokio::join!(self.current.check(), self.next.check());
            next?;
            signing?
        } else {
            self.signer(now).check().await?
        };
        Ok(Health {
            message: format!("CA rotation, phase {}: {}", phase.as_str(), signing.message),
        })
    }

    fn ca_expiry(&self) -> Option<SystemTime> {
        self.signer(SystemTime::now()).ca_expiry()
    }

    async fn recover(
        &self,
        _request: &SignRequest,
        _submitted: SystemTime,
    ) -> Result<Recovery, Error> {
        Ok(Recovery::SubmitAgain)
    }

    fn ca_certificates(&self) -> Option<CaCertificates> {
        let now = SystemTime::now();
        let signer = self.signer(now);
        let mut certificates = CaCertificates::new(
            signer.certificate().clone(),
            signer.trust_anchor().clone(),
            self.trust_at(now),
        );
        certificates.rotation = Some(RotationState::new(
            self.requested,
            self.phase_at(now),
            self.current.certificate().clone(),
            self.current_issued_until(),
            self.next.certificate().clone(),
        ));
        Some(certificates)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use certwright_simulators::fixtures::{CsrBuilder, KeyKind, TestCa};
    use certwright_x509::Csr;

    use super::*;
    use crate::LocalCaConfig;

    fn local(ca: &TestCa) -> LocalCa {
        LocalCa::from_pem(
            ca.cert_pem().as_bytes(),
            ca.key_pem().as_bytes(),
            LocalCaConfig::default(),
        )
        .unwrap()
    }

    /// Records as the engine keeps them: one anchor, valid until a time.
    #[derive(Debug)]
    struct Until(String, SystemTime);

    impl IssuanceRecords for Until {
        fn issued_until(&self, anchor: &str) -> Option<SystemTime> {
            (anchor == self.0).then_some(self.1)
        }
    }

    fn request() -> SignRequest {
        let csr = CsrBuilder::new(KeyKind::EcdsaP256)
            .common_name("www.example.test")
            .dns("www.example.test")
            .build();
        SignRequest::new(Csr::parse(csr.csr_pem.as_bytes()).unwrap(), "rotation")
    }

    /// Issues and checks the chain against the trust the backend publishes now.
    async fn issue_and_verify(ca: &RotatingCa) -> Certificate {
        let trust = ca.ca_certificates().unwrap().trust;
        let Outcome::Issued(bundle) = ca.sign(&request()).await.unwrap() else {
            panic!("the local CA signs at once");
        };
        let leaf = bundle.chain[0].clone();
        assert!(
            trust.iter().any(|root| leaf.verify_signed_by(root).is_ok()),
            "the leaf verifies with the published bundle"
        );
        leaf
    }

    #[tokio::test]
    async fn each_phase_signs_with_its_ca_and_publishes_what_verifies_it() {
        let old = TestCa::root(KeyKind::EcdsaP256, "Old Root");
        let new = TestCa::root(KeyKind::EcdsaP384, "New Root");
        for (phase, signer, trusted) in [
            (RotationPhase::Distribute, &old, vec![&old, &new]),
            (RotationPhase::Switch, &new, vec![&old, &new]),
            (RotationPhase::Retire, &new, vec![&new]),
        ] {
            let ca = RotatingCa::new(local(&old), local(&new), phase, None).unwrap();
            assert_eq!(ca.phase_at(SystemTime::now()), phase);
            let published = ca.ca_certificates().unwrap();
            let ders: Vec<&[u8]> = published.trust.iter().map(Certificate::der).collect();
            let expected: Vec<&[u8]> = trusted
                .iter()
                .map(|c| c.cert().cert_der.as_slice())
                .collect();
            assert_eq!(ders, expected, "{phase:?}");
            assert_eq!(published.signing.der(), signer.cert().cert_der.as_slice());
            let leaf = issue_and_verify(&ca).await;
            leaf.verify_signed_by(&published.signing).unwrap();
            ca.check().await.unwrap();
        }
    }

    #[tokio::test]
    async fn retire_waits_for_the_current_cas_certificates_to_expire() {
        let old = TestCa::root(KeyKind::EcdsaP256, "Old Root");
        let new = TestCa::root(KeyKind::EcdsaP256, "New Root");
        let now = SystemTime::now();
        let until = now + Duration::from_secs(3600);
        let records = Until(
            Certificate::from_der(&old.cert().cert_der)
                .unwrap()
                .fingerprint_hex(),
            until,
        );
        let ca = RotatingCa::new(
            local(&old),
            local(&new),
            RotationPhase::Retire,
            Some(std::sync::Arc::new(records)),
        )
        .unwrap();
        assert_eq!(ca.phase_at(now), RotationPhase::Switch);
        let held = ca.ca_certificates().unwrap();
        assert_eq!(
            held.trust.len(),
            2,
            "both roots while old certificates live"
        );
        let state = held.rotation.unwrap();
        assert_eq!(state.requested, RotationPhase::Retire);
        assert_eq!(state.phase, RotationPhase::Switch);
        assert_eq!(state.current_issued_until, Some(until));
        // The next CA signs in the meantime, as in Switch.
        let new_root = Certificate::from_der(&new.cert().cert_der).unwrap();
        issue_and_verify(&ca)
            .await
            .verify_signed_by(&new_root)
            .unwrap();
        // Once they have expired, Retire is in effect.
        assert_eq!(
            ca.phase_at(until + Duration::from_secs(1)),
            RotationPhase::Retire
        );
        assert_eq!(ca.phase_at(until), RotationPhase::Retire);
    }

    #[test]
    fn the_next_ca_must_be_another() {
        let old = TestCa::root(KeyKind::EcdsaP256, "Old Root");
        let e =
            RotatingCa::new(local(&old), local(&old), RotationPhase::Distribute, None).unwrap_err();
        assert!(e.to_string().contains("is the current CA"), "{e}");
    }
}
