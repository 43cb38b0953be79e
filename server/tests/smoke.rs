//! The first thing a client does: write, read back, survive a restart.

mod common;
use common::TestNode;

#[tokio::test]
async fn put_get_restart() {
    let mut n = TestNode::start().await;
    assert_eq!(n.put("foo", "bar").await, 2);
    assert_eq!(n.put("foo", "baz").await, 3);
    let kv = n.get("foo").await.unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    n.restart().await;
    let kv = n.get("foo").await.unwrap();
    assert_eq!(kv.value, b"baz");
    assert_eq!(n.put("foo", "qux").await, 4);
}
