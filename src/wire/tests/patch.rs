//! In-place edits with RFC 1624 updates equal a full rebuild.

use proptest::prelude::*;

use super::super::{DropReason, TcpFrameMut, TcpOptions, Timestamps, parse_frame};
use super::{DATA, META, SYN, build};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Patching seq, ack, window and timestamps of a built frame gives the
    /// very bytes a fresh build with the new values gives, checksum included.
    #[test]
    fn patched_frame_equals_rebuilt_frame(
        seq in any::<u32>(),
        ack in any::<u32>(),
        window in any::<u16>(),
        tsval in any::<u32>(),
        tsecr in any::<u32>(),
        syn in any::<bool>(),
        payload in proptest::collection::vec(any::<u8>(), 0..1500),
    ) {
        let before = if syn { SYN } else { DATA };
        let mut frame = build(&META, &before, &payload);
        let ts = Timestamps { tsval, tsecr };
        let after = super::super::TcpRepr {
            seq,
            ack,
            window,
            options: TcpOptions { timestamps: Some(ts), ..before.options },
            ..before
        };
        let mut edit = TcpFrameMut::new(&mut frame).unwrap();
        edit.set_seq(seq);
        edit.set_ack(ack);
        edit.set_window(window);
        prop_assert!(edit.set_timestamps(ts));
        prop_assert_eq!(&frame, &build(&META, &after, &payload));
        prop_assert_eq!(parse_frame(&frame).unwrap().tcp, after);
    }
}

#[test]
fn set_timestamps_without_the_option_changes_nothing() {
    let repr = super::super::TcpRepr {
        options: TcpOptions::default(),
        ..DATA
    };
    let mut frame = build(&META, &repr, b"abc");
    let before = frame.clone();
    let mut edit = TcpFrameMut::new(&mut frame).unwrap();
    assert!(!edit.set_timestamps(Timestamps::default()));
    assert_eq!(frame, before);
}

#[test]
fn frames_too_short_to_edit_are_refused() {
    let frame = build(&META, &DATA, &[]);
    for len in [0, 33, 53, 60] {
        let mut short = frame[..len].to_vec();
        assert!(TcpFrameMut::new(&mut short).is_err(), "len {len}");
    }
    let mut arp = frame.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(TcpFrameMut::new(&mut arp).unwrap_err(), DropReason::NotIpv4);
}
