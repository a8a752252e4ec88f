//! The PDU decoder and the text parser on arbitrary bytes: never a panic, and whatever
//! decodes re-encodes to the same PDU.
#![no_main]

use bytes::BytesMut;
use iscsi::pdu::PduDecoder;
use iscsi::text::TextPairs;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let dec = PduDecoder {
        header_digest: flags & 1 != 0,
        data_digest: flags & 2 != 0,
        max_recv_data_segment_length: 8192,
    };
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(pdu)) = dec.decode(&mut buf) {
        let _ = TextPairs::parse(&pdu.data);
        let wire = pdu.to_bytes(dec.header_digest, dec.data_digest);
        let again = dec
            .decode(&mut BytesMut::from(&wire[..]))
            .expect("re-decode")
            .expect("whole");
        assert_eq!(again, pdu);
    }
});
