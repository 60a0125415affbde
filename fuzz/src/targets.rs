// Each fuzz binary uses one of these; the corpus replay uses them all.
#![allow(dead_code)]

//! The fuzz targets' bodies: what each feeds the decoder or validator it covers. Shared,
//! by path, by the libFuzzer binaries (`fuzz/fuzz_targets/`) and the corpus replay that
//! `cargo test` runs on stable (`tests/fuzz_corpus.rs`). A target passes when nothing
//! panics, hangs or allocates without bound; every outcome, error or not, is allowed.

use std::sync::OnceLock;

use prost::Message;

/// Client frames (`parse_client_frame`) and, for the clients' side, server frames.
pub fn client_frame(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = firetower_proto::client::parse_client_frame(text, 256);
        let _ = firetower_proto::client::parse_server_frame(text);
    }
    let _ = firetower_proto::client::validate_json_data(data);
}

/// Relay frames: one buffer, and the same bytes cut into chunks for the stream decoder.
pub fn relay_frame(data: &[u8]) {
    let _ = firetower_proto::relay::decode_frame(data, 1 << 20);
    let mut decoder = firetower_proto::relay::FrameDecoder::new(1 << 20);
    let cut = data.first().map_or(1, |b| usize::from(*b % 16) + 1);
    for chunk in data.chunks(cut) {
        decoder.push(bytes::Bytes::copy_from_slice(chunk));
        while let Ok(Some(_)) = decoder.next_frame() {}
    }
}

/// A client token through the edge's check (signature, expiry, claims, grants).
pub fn jwt(data: &[u8]) {
    static AUTH: OnceLock<firetower_edge::ClientAuth> = OnceLock::new();
    let auth = AUTH.get_or_init(|| {
        firetower_edge::ClientAuth::from_hs256_secret(b"fuzzing secret of thirty-two bytes!")
    });
    let token = String::from_utf8_lossy(data);
    let _ = auth.verify(&token);
    if let Ok(request) = firetower_edge::auth::upgrade_request(&token) {
        if let Ok(verified) = auth.check(&request) {
            let _ = verified.grants.may_subscribe("chat/x");
        }
    }
}

/// gRPC request bodies as the distributor decodes and validates them.
pub fn grpc_requests(data: &[u8]) {
    use firetower_proto::distributor::v1 as dpb;
    if let Ok(batch) = dpb::PublishBatchRequest::decode(data) {
        for (i, m) in batch.messages.iter().enumerate() {
            let _ =
                firetower_distributor::service::check_message(65536, &format!("messages[{i}]."), m);
        }
    }
    if let Ok(forward) = dpb::ForwardBatchRequest::decode(data) {
        for run in &forward.runs {
            let _ = firetower_proto::topic::validate_route_topic(&run.topic);
            for m in &run.messages {
                let _ = firetower_distributor::service::check_data(65536, "", &m.data);
            }
        }
    }
    let _ = dpb::HistoryRequest::decode(data);
    let _ = dpb::HandoverRequest::decode(data);
}
