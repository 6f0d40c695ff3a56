//! A local CA in rotation: the current CA (`spec.ca.secretName`) and the next one, in
//! three phases. `Distribute` signs with the current CA and publishes both roots;
//! `Switch` signs with the next and publishes both; `Retire` signs with the next and
//! publishes its root only. `Retire` is held at `Switch` until the certificates the
//! current CA signed have expired: [`RotatingCa::new`] is told until when they are
//! valid (the engine records it before each signature), and the phase in effect is
//! decided at each call, so the rotation moves on by itself at that time.

use std::time::SystemTime;

use certwright_x509::Certificate;

use super::LocalCa;
use crate::{
    Backend, CaCertificates, Error, Health, Outcome, Recovery, RotationPhase, RotationState,
    SignRequest,
};

/// Two local CAs and the phase of the rotation from the first to the second.
#[derive(Debug)]
pub struct RotatingCa {
    current: LocalCa,
    next: LocalCa,
    requested: RotationPhase,
    /// Until when certificates the current CA signed are valid; `None`: it signed none
    /// that certwright recorded.
    current_issued_until: Option<SystemTime>,
}

impl RotatingCa {
    /// A rotation from `current` to `next`, in `phase`. `current_issued_until` is the
    /// latest `notAfter` among the certificates `current` signed: `Retire` waits for it.
    ///
    /// # Errors
    /// [`Error::Misconfigured`] when both are the same CA certificate.
    pub fn new(
        current: LocalCa,
        next: LocalCa,
        phase: RotationPhase,
        current_issued_until: Option<SystemTime>,
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
            current_issued_until,
        })
    }

    /// The phase in effect at `now`: the one asked for, except `Retire` before the
    /// current CA's certificates have expired, which is held at `Switch`.
    pub fn phase_at(&self, now: SystemTime) -> RotationPhase {
        match self.requested {
            RotationPhase::Retire if self.current_issued_until.is_some_and(|t| t > now) => {
                RotationPhase::Switch
            }
            phase => phase,
        }
    }

    /// The CA that signs at `now`.
    fn signer(&self, now: SystemTime) -> &LocalCa {
        match self.phase_at(now) {
            RotationPhase::Distribute => &self.current,
            RotationPhase::Switch | RotationPhase::Retire => &self.next,
        }
    }

    /// What relying parties should trust at `now`.
    fn trust_at(&self, now: SystemTime) -> Vec<Certificate> {
        match self.phase_at(now) {
            RotationPhase::Retire => vec![self.next.trust_anchor().clone()],
            RotationPhase::Distribute | RotationPhase::Switch => vec![
                self.current.trust_anchor().clone(),
                self.next.trust_anchor().clone(),
            ],
        }
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
        let signing = self.signer(now).check().await?;
        if phase == RotationPhase::Distribute {
            self.next.check().await?;
        }
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
        let mut certificates =
            CaCertificates::new(self.signer(now).certificate().clone(), self.trust_at(now));
        certificates.rotation = Some(RotationState::new(
            self.requested,
            self.phase_at(now),
            self.current.certificate().clone(),
            self.current_issued_until,
            self.next.certificate().clone(),
        ));
        Some(certificates)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::time::Duration;

    use certwright_testkit::fixtures::{CsrBuilder, KeyKind, TestCa};
    use certwright_x509::Csr;

    use super::*;
    use crate::ca::LocalCaConfig;

    fn local(ca: &TestCa) -> LocalCa {
        LocalCa::from_pem(
            ca.cert_pem().as_bytes(),
            ca.key_pem().as_bytes(),
            LocalCaConfig::default(),
        )
        .unwrap()
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
        let ca =
            RotatingCa::new(local(&old), local(&new), RotationPhase::Retire, Some(until)).unwrap();
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
