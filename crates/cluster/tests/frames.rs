//! Whatever bytes arrive, decoding gives an envelope or a typed error, never a panic.

use bytes::Bytes;
use cluster::{Channel, Envelope, FrameError, NodeId, PROTOCOL_VERSION};
use proptest::prelude::*;

/// A fixed seed: the same 2000 cases on every run (a failure prints the
/// input; `PROPTEST_RNG_SEED` explores others).
fn config() -> ProptestConfig {
    let seed = std::env::var("PROPTEST_RNG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f4a3e5);
    ProptestConfig {
        cases: 2000,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn random_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        match Envelope::decode(Bytes::from(bytes.clone())) {
            Ok(envelope) => {
                // Whatever decoded re-encodes to a frame that decodes to the
                // same envelope (not necessarily the same bytes: a varint may
                // arrive in a longer form than the one we write).
                prop_assert_eq!(Envelope::decode(envelope.encode()), Ok(envelope));
            }
            Err(FrameError::Empty) => prop_assert!(bytes.is_empty()),
            Err(FrameError::UnsupportedVersion { found }) => prop_assert_ne!(found, PROTOCOL_VERSION),
            Err(FrameError::Header(_)) => prop_assert_eq!(bytes[0], PROTOCOL_VERSION),
            Err(FrameError::TooLarge { .. }) => prop_assert!(false, "decode has no size limit"),
        }
    }

    #[test]
    fn envelopes_round_trip(
        from in any::<u64>(),
        to in any::<u64>(),
        channel in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let envelope = Envelope {
            from: NodeId(from),
            to: NodeId(to),
            channel: Channel(channel),
            payload: Bytes::from(payload),
        };
        prop_assert_eq!(Envelope::decode(envelope.encode()), Ok(envelope));
    }
}
