//! The messages the harness reads from the pipeline come back as the types that wrote
//! them: the hook channel's messages, the agent's summary and the target's events.

use reference_agent::agent::backup::{Summary, VolumeSummary};
use reference_agent::agent::hook::{FrozenVolume, HookMessage};
use reference_agent::target::{SessionReport, SessionStatus, TargetEvent, TargetFaults};

#[test]
fn hook_messages_round_trip_and_keep_their_wire_form() {
    let frozen = HookMessage::Frozen {
        run: 2,
        instant_ns: 123,
        volumes: vec![FrozenVolume {
            id: "data".into(),
            device: "/dev/vdb".into(),
            mount_point: "/mnt/data".into(),
            minor: 0,
        }],
    };
    let line = serde_json::to_string(&frozen).unwrap();
    assert!(line.starts_with(r#"{"type":"frozen""#), "{line}");
    assert_eq!(serde_json::from_str::<HookMessage>(&line).unwrap(), frozen);
    assert_eq!(
        serde_json::to_string(&HookMessage::Continue).unwrap(),
        r#"{"type":"continue"}"#
    );
    let abort = HookMessage::Abort {
        reason: "no".into(),
    };
    assert_eq!(
        serde_json::to_string(&abort).unwrap(),
        r#"{"type":"abort","reason":"no"}"#
    );
}

#[test]
fn the_summary_is_the_last_line_that_reads_as_one() {
    let summary = Summary {
        result: "ok".into(),
        run: 1,
        volumes: vec![VolumeSummary {
            id: "data".into(),
            generation: Some(1),
            committed: true,
            session_ms: 40,
            ..VolumeSummary::default()
        }],
        ..Summary::default()
    };
    let out = format!(
        "progress 10%\n{}\n{{\"not\":\"a summary\"}}\ntrailing words\n",
        serde_json::to_string(&summary).unwrap()
    );
    let read = Summary::from_output(&out).unwrap();
    assert!(read.ok());
    assert_eq!(read.volumes[0].session_ms, 40);
    assert!(Summary::from_output("nothing here\n").is_none());
}

#[test]
fn target_events_round_trip() {
    let report = SessionReport {
        session: "s1".into(),
        volume: "data".into(),
        generation: 3,
        kind: "incremental".into(),
        parent: Some(2),
        status: SessionStatus::Failed,
        reason: Some("verify".into()),
        message: Some("3 blocks differ".into()),
        frames: 10,
        blocks: 40,
        bad_total: 3,
        bad_blocks: vec![1, 2, 3],
        fault_sites: vec![7],
        verified: false,
        resumes: 0,
        nacks: 1,
        ignored_frames: 0,
        duration_ms: 5,
        faults: TargetFaults::default(),
    };
    for ev in [
        TargetEvent::Session(report),
        TargetEvent::Listening {
            address: "unix:/t".into(),
            store: "/s".into(),
        },
    ] {
        let line = serde_json::to_string(&ev).unwrap();
        assert_eq!(serde_json::from_str::<TargetEvent>(&line).unwrap(), ev);
    }
}
