//! Worker processes in one consumer group: three workers over six partitions with one killed (SIGKILL)
//! and restarted five times, and workers added under load (cooperative rebalances). Both end with
//! the exactness checks. Each worker has an LMDB directory of its own, as deployed (one volume per
//! replica), checked on its own: each running replica's becomes complete (its LMDB mirror copies
//! what the others stored). The tests take a lock: each runs three workers on two cores.

mod common;

use std::time::Duration;

use common::faults::{self as f, Scenario};
use common::kafka as k;
use rand::{Rng, SeedableRng};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_six_partitions_one_killed_five_times_stores_exactly_the_valid_set() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::new("group-kill", 6).await;
    let seed: u64 = rand::thread_rng().gen();
    eprintln!("seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let producing = tokio::spawn({
        let topic = s.topic.clone();
        async move { k::produce_at(&topic, 6000, Some(150.0), 0.05, 0.05, 0.05, seed).await }
    });
    // One LMDB per replica, as deployed; the victim keeps its own across restarts.
    let mut a = s.spawn_replica("a", "worker-a", &[]);
    let mut b = s.spawn_replica("b", "worker-b", &[]);
    let mut victim = s.spawn_replica("victim", "victim-0", &[]);
    for round in 1..=5 {
        // Killed while it holds partitions and the group makes progress, at a random moment.
        f::wait_log(&victim, "partition assigned", Duration::from_secs(90)).await;
        let floor = s.event_count().await + 50;
        s.wait_events_at_least(floor, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..1000))).await;
        victim.crash();
        eprintln!(
            "kill {round}: {} events stored so far",
            s.event_count().await
        );
        victim = s.spawn_replica("victim", &format!("victim-{round}"), &[]);
    }

    let produced = producing.await.expect("producer task");
    s.wait_committed_to_end(Duration::from_secs(180)).await;
    // Each replica's mirror copies what the others stored: every LMDB becomes complete.
    s.wait_replicas_complete(&["a", "b", "victim"], &produced)
        .await;
    for w in [&mut a, &mut b, &mut victim] {
        w.terminate_ok(s.stop_timeout());
    }
    f::assert_committed_equals_end(&s.group, &s.topic);
    s.assert_replicas_exact(&["a", "b", "victim"], &produced)
        .await;
    let repeats =
        common::dlq::assert_holds_exactly_the_poison(&s.topic, &produced, s.config.verify.enabled);
    eprintln!("DLQ repeats: {repeats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_added_under_load_rebalance_without_loss_or_repeats() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::new("group-add", 6).await;
    let producing = tokio::spawn({
        let topic = s.topic.clone();
        async move { k::produce_at(&topic, 5000, Some(250.0), 0.05, 0.05, 0.05, 62).await }
    });
    let mut first = s.spawn_replica("1", "worker-1", &[]);
    s.wait_events_at_least(500, Duration::from_secs(60)).await;
    let mut second = s.spawn_replica("2", "worker-2", &[]);
    f::wait_log(&second, "partition assigned", Duration::from_secs(60)).await;
    let floor = s.event_count().await + 500;
    s.wait_events_at_least(floor, Duration::from_secs(60)).await;
    let mut third = s.spawn_replica("3", "worker-3", &[]);
    f::wait_log(&third, "partition assigned", Duration::from_secs(60)).await;
    assert!(
        first.log_text().contains("partitions revoked"),
        "the first worker never gave partitions away\n{}",
        first.log_text()
    );

    let produced = producing.await.expect("producer task");
    s.wait_committed_to_end(Duration::from_secs(120)).await;
    s.wait_replicas_complete(&["1", "2", "3"], &produced).await;
    for w in [&mut first, &mut second, &mut third] {
        w.terminate_ok(s.stop_timeout());
    }
    // Graceful hand-overs: in-flight batches finish and commit before a partition moves, so no
    // poison message is dead-lettered twice.
    f::assert_committed_equals_end(&s.group, &s.topic);
    s.assert_replicas_exact(&["1", "2", "3"], &produced).await;
    let repeats =
        common::dlq::assert_holds_exactly_the_poison(&s.topic, &produced, s.config.verify.enabled);
    assert_eq!(repeats, 0, "a poison message was dead-lettered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_handed_back_keeps_the_offset_its_other_owner_committed() {
    let _serial = SERIAL.lock().await;
    let s = Scenario::new("group-back", 2).await;
    let first = k::produce(&s.topic, 400, 0.0, 0.0, 0.0, 71).await;
    let mut a = s.spawn_replica("a", "worker-a", &[]);
    s.wait_committed_to_end(Duration::from_secs(60)).await;
    // B takes one of A's partitions and moves it on; then B dies and the partition goes back to A,
    // which committed an older offset of it before.
    let mut b = s.spawn_replica("b", "worker-b", &[]);
    f::wait_log(&b, "partition assigned", Duration::from_secs(60)).await;
    let second = k::produce(&s.topic, 400, 0.0, 0.0, 0.0, 72).await;
    s.wait_committed_to_end(Duration::from_secs(60)).await;
    let assigned_to_a = a.log_text().matches("partition assigned").count();
    b.crash();
    k::wait_for(
        Duration::from_secs(60),
        "the dead worker's partition to go back to A",
        || {
            let back = a.log_text().matches("partition assigned").count() > assigned_to_a;
            async move { back.then_some(()) }
        },
    )
    .await;
    // A re-commits its positions every 5 s: past two of those, the group's offsets must still be
    // where B left them (the end), not where A was before B took the partition.
    tokio::time::sleep(Duration::from_secs(11)).await;
    f::assert_committed_equals_end(&s.group, &s.topic);
    let mut both = first.clone();
    both.records.extend(second.records.iter().cloned());
    // A's mirror copies what B stored before it died.
    s.wait_replicas_complete(&["a"], &both).await;
    a.terminate_ok(s.stop_timeout());
    f::assert_committed_equals_end(&s.group, &s.topic);
    s.assert_replicas_exact(&["a", "b"], &both).await;
}
