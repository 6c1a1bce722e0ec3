//! Node key file checks.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use playergold_net::identity::{KeyError, NODE_KEY_FILE};
use playergold_net::load_or_create_node_key;

#[test]
fn bad_key_file_permissions_give_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = load_or_create_node_key(dir.path()).expect("first start creates the key");
    let path = dir.path().join(NODE_KEY_FILE);
    assert_eq!(
        fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
        0o600
    );

    for mode in [0o640, 0o604, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        let err = load_or_create_node_key(dir.path()).expect_err("must refuse to start");
        assert!(
            matches!(err, KeyError::InsecurePermissions { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(&format!("{mode:04o}")), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");
    }

    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
    let again = load_or_create_node_key(dir.path()).expect("fixed permissions load");
    assert_eq!(first.public(), again.public());
}
