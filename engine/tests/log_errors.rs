//! Faults of the environment the disk log must recognise and report with the path
//! involved: a missing, volatile or read-only data directory, and a full disk.
//!
//! The mapping of EINVAL from an O_DIRECT open to `DirectIoUnsupported` is a unit test in
//! `recovery.rs`, because the function that maps it is private to the crate.

mod log_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use log_support::{IDENTITY, TestDir, entry, payload, run, small_config, snapshot};
use shardraft::log::{
    BatchNumber, DiskLog, GroupId, LogConfig, LogStore, MemoryLog, StorageError, WriteBatch,
};

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

fn has_tool(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// Runs a command, returning its standard output, or why it failed.
fn command(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|error| format!("{program}: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Runs `future` on a glommio executor in a thread of its own, so that every file the
/// executor opened is closed when this returns and the filesystem can be unmounted.
fn run_on_thread<T: Send + 'static>(
    future: impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = T>>> + Send + 'static,
) -> T {
    std::thread::spawn(move || run(future()))
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn open_error(config: &LogConfig) -> StorageError {
    run(async {
        match DiskLog::open(config, IDENTITY).await {
            Ok(log) => {
                log.close().await.expect("closing");
                panic!("the log opened in {:?}", config.data_dir);
            }
            Err(error) => error,
        }
    })
}

#[test]
fn missing_data_dir_is_reported() {
    let dir = TestDir::new("missing-data-dir");
    let config = small_config(&dir.path.join("absent"));

    let error = open_error(&config);

    assert!(
        matches!(&error, StorageError::DataDirMissing { path } if path == &config.data_dir),
        "expected DataDirMissing for {:?}, got {error:?}",
        config.data_dir
    );
    let message = error.to_string();
    assert!(
        message.contains(&config.data_dir.display().to_string()),
        "the message does not name the directory: {message}"
    );
}

fn is_tmpfs(path: &str) -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 2 && fields[1] == path && fields[2] == "tmpfs"
        })
    })
}

#[test]
fn data_dir_on_tmpfs_is_rejected() {
    if !is_tmpfs("/dev/shm") {
        println!("skipped: /dev/shm is not a tmpfs mount here");
        return;
    }
    let dir = PathBuf::from(format!(
        "/dev/shm/shardraft-log-errors-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("creating a directory on /dev/shm");
    let config = small_config(&dir);

    let error = open_error(&config);
    let _ = std::fs::remove_dir_all(&dir);

    assert!(
        matches!(
            &error,
            StorageError::VolatileFilesystem {
                filesystem: "tmpfs",
                ..
            }
        ),
        "expected VolatileFilesystem on tmpfs, got {error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("tmpfs"),
        "the message does not say tmpfs: {message}"
    );
    assert!(
        message.contains("storage = \"memory\""),
        "the message does not suggest storage = \"memory\": {message}"
    );
}

/// A mount this test made, unmounted when dropped, even after a failed assertion.
struct MountGuard {
    target: PathBuf,
    loop_device: Option<String>,
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        // NOTE: after glommio has done I/O on the filesystem, it stays busy until the test
        // process exits, even once every executor thread has ended and no descriptor is
        // open. A lazy unmount then detaches it at once and the kernel frees it at exit.
        let target = self.target.to_string_lossy().into_owned();
        if command("umount", &[&target]).is_err()
            && let Err(error) = command("umount", &["--lazy", &target])
        {
            eprintln!("cleanup: {error}");
        }
        if let Some(device) = &self.loop_device
            && let Err(error) = command("losetup", &["-d", device])
        {
            eprintln!("cleanup: {error}");
        }
    }
}

/// Makes `target` a read-only view of `source`: a bind mount as root, else file modes.
fn make_read_only(source: &Path, target: &Path) -> Result<Option<MountGuard>, String> {
    if !is_root() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o555))
            .map_err(|error| format!("chmod: {error}"))?;
        return Ok(None);
    }
    if !has_tool("mount") {
        return Err("running as root without the mount tool".to_string());
    }
    let (source, target_text) = (source.to_string_lossy(), target.to_string_lossy());
    command("mount", &["--bind", &source, &target_text])?;
    let guard = MountGuard {
        target: target.to_path_buf(),
        loop_device: None,
    };
    command("mount", &["-o", "remount,ro,bind", &target_text])?;
    Ok(Some(guard))
}

#[test]
fn unwritable_data_dir_is_reported() {
    let dir = TestDir::new("unwritable-data-dir");
    let source = dir.path.join("source");
    let target = dir.path.join("data");
    std::fs::create_dir_all(&source).expect("creating the source directory");
    std::fs::create_dir_all(&target).expect("creating the data directory");
    let guard = match make_read_only(&source, &target) {
        Ok(guard) => guard,
        Err(reason) => {
            println!("skipped: cannot make a read-only directory: {reason}");
            return;
        }
    };
    let config = small_config(&target);

    let error = open_error(&config);
    drop(guard);

    assert!(
        matches!(&error, StorageError::DataDirNotWritable { path, .. } if path == &target),
        "expected DataDirNotWritable for {target:?}, got {error:?}"
    );
}

/// A small ext4 filesystem on a loop device, mounted under the target directory.
struct SmallFilesystem {
    image: PathBuf,
    mount_point: PathBuf,
    guard: Option<MountGuard>,
}

impl SmallFilesystem {
    fn create(dir: &Path, bytes: u64) -> Result<SmallFilesystem, String> {
        let image = dir.join("fs.img");
        let file = std::fs::File::create(&image).map_err(|error| error.to_string())?;
        file.set_len(bytes).map_err(|error| error.to_string())?;
        command(
            "mkfs.ext4",
            &["-q", "-F", "-b", "4096", &image.to_string_lossy()],
        )?;
        let mount_point = dir.join("mnt");
        std::fs::create_dir_all(&mount_point).map_err(|error| error.to_string())?;
        let mut filesystem = SmallFilesystem {
            image,
            mount_point,
            guard: None,
        };
        filesystem.mount()?;
        Ok(filesystem)
    }

    fn mount(&mut self) -> Result<(), String> {
        let device = command(
            "losetup",
            &["--find", "--show", &self.image.to_string_lossy()],
        )?;
        let guard = MountGuard {
            target: self.mount_point.clone(),
            loop_device: Some(device.clone()),
        };
        if let Err(error) = command("mount", &[&device, &self.mount_point.to_string_lossy()]) {
            // Detach the device; the guard's umount fails harmlessly.
            drop(guard);
            return Err(error);
        }
        self.guard = Some(guard);
        Ok(())
    }
}

fn is_disk_full(error: &StorageError, inside: &Path) -> bool {
    match error {
        StorageError::DiskFull { path, .. } => path.starts_with(inside),
        StorageError::Stopped { cause } => is_disk_full(cause, inside),
        _ => false,
    }
}

#[test]
fn full_disk_stops_the_log_and_keeps_durable_batches() {
    // After a write fails for lack of space the log rejects every later submission, and a
    // restart with space freed recovers every batch that was reported durable.
    if !is_root() {
        println!("skipped: creating a loop-mounted filesystem needs root");
        return;
    }
    if let Some(tool) = ["losetup", "mkfs.ext4", "mount", "umount"]
        .into_iter()
        .find(|tool| !has_tool(tool))
    {
        println!("skipped: {tool} is not installed");
        return;
    }
    let dir = TestDir::new("full-disk");
    let filesystem = match SmallFilesystem::create(&dir.path, 8 << 20) {
        Ok(filesystem) => filesystem,
        Err(reason) => {
            println!("skipped: cannot loop-mount a small filesystem: {reason}");
            return;
        }
    };
    let data_dir = filesystem.mount_point.join("data");
    std::fs::create_dir_all(&data_dir).expect("creating the data directory");
    // Space to free before the restart, so that recovery can create its probe file.
    let reserve = filesystem.mount_point.join("reserve");
    std::fs::write(&reserve, vec![1u8; 256 << 10]).expect("writing the reserve file");
    let config = LogConfig {
        segment_bytes: 1 << 20,
        flush_bytes_max: 64 << 10,
        pending_bytes_max: 1 << 20,
        zero_fill_segments: true,
        ..small_config(&data_dir)
    };
    let group = GroupId(1);

    let mount_point = filesystem.mount_point.clone();
    let first_config = config.clone();
    let durable_batches = run_on_thread(move || {
        Box::pin(async move {
            let config = first_config;
            let log = DiskLog::open(&config, IDENTITY).await.expect("opening");
            let mut durable_batches = Vec::new();
            let mut index = 0u64;
            let failure = loop {
                let mut batch = WriteBatch::new();
                let data = (index + 1..=index + 4)
                    .map(|i| entry(i, 1, payload(group, i, 1, 8 << 10)))
                    .collect();
                batch.append(group, data);
                let number = match log.submit(batch.clone()) {
                    Ok(number) => number,
                    Err(error) => break error,
                };
                match log.wait_durable(BatchNumber(number.0 - 1)).await {
                    Ok(durable) if durable >= number => {
                        durable_batches.push(batch);
                        index += 4;
                    }
                    Ok(durable) => panic!("wait_durable returned {durable:?} before {number:?}"),
                    Err(error) => break error,
                }
                assert!(index < 10_000, "8 MiB filled without a DiskFull error");
            };
            assert!(
                is_disk_full(&failure, &mount_point),
                "expected DiskFull naming a path on the small filesystem, got {failure:?}"
            );
            let mut batch = WriteBatch::new();
            batch.append(group, vec![entry(index + 1, 1, "after the failure")]);
            let later = log.submit(batch);
            assert!(
                later
                    .as_ref()
                    .is_err_and(|error| is_disk_full(error, &mount_point)),
                "a submission after the failure must be rejected with the cause, got {later:?}"
            );
            assert!(log.durable().is_err(), "durable() must report the failure");
            let _ = log.close().await;
            durable_batches
        })
    });
    assert!(
        !durable_batches.is_empty(),
        "no batch became durable before the disk filled"
    );

    // Remounting would need the filesystem idle, which glommio leaves it only at process
    // exit (see `MountGuard`), so the restart frees space instead.
    std::fs::remove_file(&reserve).expect("freeing the reserve");
    run_on_thread(move || {
        Box::pin(async move {
            let log = DiskLog::open(&config, IDENTITY)
                .await
                .expect("reopening after freeing space");
            let model = MemoryLog::new(&LogConfig::default());
            for batch in &durable_batches {
                model
                    .submit(batch.clone())
                    .expect("the model accepts every batch");
            }
            assert!(
                snapshot(&log).await == snapshot(&model).await,
                "the reopened log lacks batches that were reported durable"
            );
            log.close().await.expect("closing");
        })
    });
    drop(filesystem);
}
