//! Ordering a CA's certificates into one chain, leaf first, and splitting off the root.
//!
//! CAs return certificates in any order, sometimes with duplicates; cert-manager wants the
//! leaf and intermediates in `status.certificate` and the root in `status.ca`.

use crate::certificate::{Certificate, quote};
use crate::{Error, MAX_CHAIN_CERTIFICATES};

/// Certificates ordered leaf first, each one issued (name and signature) by the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    certs: Vec<Certificate>,
    ends_in_root: bool,
}

/// What is known about whether certificate `i` issued certificate `j`.
#[derive(Clone, Debug)]
enum Link {
    /// Names differ: `i`'s subject is not `j`'s issuer.
    Unrelated,
    /// Names match and `i`'s key verifies `j`'s signature.
    Issued,
    /// Names match but the signature does not verify; holds why.
    Failed(String),
}

impl Chain {
    /// Orders arbitrary certificates leaf → root.
    ///
    /// Exact duplicates (same DER) are dropped. The leaf is the one certificate that issues
    /// no other certificate of the set; from it, each step up takes the certificate whose
    /// subject is the current issuer and whose key verifies the current signature, until a
    /// self-signed root or a certificate whose issuer is not in the set. Every certificate
    /// must end up on that path; otherwise [`Error::BrokenChain`] names what is missing,
    /// ambiguous or left over.
    pub fn order(certs: Vec<Certificate>) -> Result<Chain, Error> {
        let mut unique: Vec<Certificate> = Vec::with_capacity(certs.len());
        for cert in certs {
            if !unique.contains(&cert) {
                unique.push(cert);
            }
        }
        if unique.is_empty() {
            return Err(Error::NoCertificates);
        }
        if unique.len() > MAX_CHAIN_CERTIFICATES {
            return Err(Error::TooManyCertificates {
                limit: MAX_CHAIN_CERTIFICATES,
                actual: unique.len(),
            });
        }

        let n = unique.len();
        // links[i][j]: did i issue j? Signatures are only checked where the names match.
        let links: Vec<Vec<Link>> = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| {
                        if unique[i].subject() != unique[j].issuer() {
                            Link::Unrelated
                        } else {
                            match unique[j].verify_signed_by(&unique[i]) {
                                Ok(()) => Link::Issued,
                                Err(e) => Link::Failed(e.to_string()),
                            }
                        }
                    })
                    .collect()
            })
            .collect();
        let issued = |i: usize, j: usize| matches!(links[i][j], Link::Issued);
        let self_signed = |i: usize| issued(i, i);

        let leaves: Vec<usize> = (0..n)
            .filter(|&i| !(0..n).any(|j| j != i && issued(i, j)))
            .collect();

        let walk = |leaf: usize| -> Vec<usize> {
            let mut path = vec![leaf];
            let mut current = leaf;
            while !self_signed(current) {
                let next = (0..n).find(|&k| !path.contains(&k) && issued(k, current));
                match next {
                    Some(k) => {
                        path.push(k);
                        current = k;
                    }
                    None => break,
                }
            }
            path
        };

        let leaf = match leaves.as_slice() {
            [leaf] => *leaf,
            [] => {
                return Err(Error::BrokenChain {
                    reason: "every certificate issues another one in the set (a cycle), so \
                             none of them is the leaf"
                        .to_owned(),
                });
            }
            several => {
                let names: Vec<String> = several.iter().map(|&i| unique[i].describe()).collect();
                let mut reason = format!(
                    "the certificates form {} separate chains, starting at {}",
                    several.len(),
                    names.join(", ")
                );
                for &start in several {
                    let path = walk(start);
                    if let Some(&top) = path.last()
                        && !self_signed(top)
                    {
                        reason.push_str("; ");
                        reason.push_str(&missing_issuer(&unique, &links, top));
                    }
                }
                return Err(Error::BrokenChain { reason });
            }
        };

        let path = walk(leaf);
        let left_over: Vec<String> = (0..n)
            .filter(|i| !path.contains(i))
            .map(|i| unique[i].describe())
            .collect();
        if !left_over.is_empty() {
            return Err(Error::BrokenChain {
                reason: format!(
                    "not on the path from the leaf {}: {}",
                    unique[leaf].describe(),
                    left_over.join(", ")
                ),
            });
        }

        let ends_in_root = path.last().is_some_and(|&top| self_signed(top));
        let mut slots: Vec<Option<Certificate>> = unique.into_iter().map(Some).collect();
        let certs = path.iter().filter_map(|&i| slots[i].take()).collect();
        Ok(Chain {
            certs,
            ends_in_root,
        })
    }

    /// The certificates, leaf first.
    pub fn certificates(&self) -> &[Certificate] {
        &self.certs
    }

    /// The leaf (end-entity) certificate.
    pub fn leaf(&self) -> &Certificate {
        // `order` never builds an empty chain; `certs[0]` exists.
        &self.certs[0]
    }

    /// Splits the chain for cert-manager: (leaf and intermediates, root).
    ///
    /// The root is the last certificate when it is self-signed; otherwise it is `None` and
    /// every certificate is in the first part. A chain of one self-signed certificate gives
    /// that certificate in both parts.
    pub fn split(&self) -> (Vec<Certificate>, Option<Certificate>) {
        match self.certs.split_last() {
            Some((root, rest)) if self.ends_in_root && !rest.is_empty() => {
                (rest.to_vec(), Some(root.clone()))
            }
            Some((root, _)) if self.ends_in_root => (vec![root.clone()], Some(root.clone())),
            _ => (self.certs.clone(), None),
        }
    }
}

/// Explains why nothing in the set issued certificate `top`.
fn missing_issuer(certs: &[Certificate], links: &[Vec<Link>], top: usize) -> String {
    let failures: Vec<String> = links
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != top)
        .filter_map(|(_, row)| match &row[top] {
            Link::Failed(why) => Some(why.clone()),
            _ => None,
        })
        .collect();
    let issuer = quote(certs[top].issuer());
    let subject = certs[top].describe();
    if failures.is_empty() {
        format!("issuer {issuer} of {subject} is not present")
    } else {
        format!(
            "a certificate named {issuer} is present but did not issue {subject} ({})",
            failures.join("; ")
        )
    }
}
