//! The singleton protocol's decoders for fuzzing (feature `fuzzing`). See
//! `cluster::fuzzing`.

use cluster::fuzzing::Decoder;

use crate::protocol::{ToManager, ToProxy};

fn sample<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).unwrap_or_default()
}

/// The singleton protocol's network decoders.
pub fn decoders() -> Vec<Decoder> {
    vec![
        Decoder {
            name: "singleton manager message",
            decode: |b| {
                postcard::from_bytes::<ToManager>(b)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
            samples: vec![
                sample(&ToManager::Identify),
                sample(&ToManager::HandOverToMe),
            ],
        },
        Decoder {
            name: "singleton proxy message",
            decode: |b| {
                postcard::from_bytes::<ToProxy>(b)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
            samples: vec![
                sample(&ToProxy::Reply {
                    id: 3,
                    payload: vec![9, 9],
                }),
                sample(&ToProxy::Failed {
                    id: 4,
                    reason: "bad".into(),
                }),
            ],
        },
    ]
}
