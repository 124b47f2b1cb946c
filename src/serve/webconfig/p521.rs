//! ECDH on P-521 for the web config's TLS server: Go offers the curve, rustls' providers do
//! not, and aws-lc has it.

use rustls::crypto::{ActiveKeyExchange, GetRandomFailed, SharedSecret, SupportedKxGroup};
use rustls::NamedGroup;

/// The key exchange group to add to a provider.
pub static ECDH_P521: &dyn SupportedKxGroup = &P521;

#[derive(Debug)]
struct P521;

struct P521Exchange {
    private: ::aws_lc_rs::agreement::EphemeralPrivateKey,
    public: ::aws_lc_rs::agreement::PublicKey,
}

impl SupportedKxGroup for P521 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let rng = ::aws_lc_rs::rand::SystemRandom::new();
        let private = ::aws_lc_rs::agreement::EphemeralPrivateKey::generate(
            &::aws_lc_rs::agreement::ECDH_P521,
            &rng,
        )
        .map_err(|_| GetRandomFailed)?;
        let public = private.compute_public_key().map_err(|_| GetRandomFailed)?;
        Ok(Box::new(P521Exchange { private, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::secp521r1
    }
}

impl ActiveKeyExchange for P521Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let invalid = || rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::InvalidKeyShare);
        // TLS allows only the uncompressed point encoding (RFC 8446, 4.2.8.2).
        if peer.first() != Some(&0x04) {
            return Err(invalid());
        }
        let peer = ::aws_lc_rs::agreement::UnparsedPublicKey::new(
            &::aws_lc_rs::agreement::ECDH_P521,
            peer,
        );
        ::aws_lc_rs::agreement::agree_ephemeral(self.private, peer, (), |secret| {
            Ok(SharedSecret::from(secret))
        })
        .map_err(|()| invalid())
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_ref()
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::secp521r1
    }
}
