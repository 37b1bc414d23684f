use super::*;
use std::thread;
use std::time::{Duration, Instant};
use tempfile::tempdir;

const TOTAL: u64 = 3000;

#[test]
fn reader_thread_sees_every_committed_record_once_in_order_while_the_writer_appends() {
    let dir = tempdir().unwrap();
    let config = LogConfig {
        segment_bytes_max: 4096,
        index_interval_bytes: 256,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), &config);
    let reader = log.reader();
    let tail = thread::spawn(move || {
        // A bound instead of hanging forever if the writer's commits never became visible.
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut next = Offset(0);
        let mut reads = 0u64;
        while next.get() < TOTAL {
            assert!(Instant::now() < deadline, "reader stuck at {next}");
            let batch = reader.read(next, 2048, 50).unwrap();
            let committed = reader.committed_offset();
            reads += 1;
            for record in &batch {
                assert_eq!(record.offset, next, "no gap, no repeat");
                assert!(record.offset < committed, "only committed records");
                assert_eq!(record.payload, payload(next.get()));
                next = next.next();
            }
            if batch.is_empty() {
                thread::yield_now();
            }
        }
        (next, reads)
    });
    for i in 0..TOTAL {
        log.append(ts(i), &payload(i)).unwrap();
        // Uneven batches, like commits that wait for the previous fsync.
        if i % 7 == 3 || i % 11 == 0 {
            log.commit().unwrap();
        }
    }
    log.commit().unwrap();
    let (next, reads) = tail.join().unwrap();
    assert_eq!(next, Offset(TOTAL));
    assert!(reads > 1);
    assert!(log.stats().segments > 10, "reads crossed segment rolls");
}

#[test]
fn log_is_send_and_reader_is_send_sync_and_clone() {
    fn send<T: Send>() {}
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    send::<Log>();
    send_sync_clone::<crate::LogReader>();
}
