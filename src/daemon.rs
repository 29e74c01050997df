//! Running a mount: start-up (in the background, reporting readiness to the command that
//! started it), the FUSE session, signals, and shutdown.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::Settings;
use crate::fetch::Fetcher;
use crate::fs::fuse::FuseAdapter;
use crate::fs::{ColdReader, Fs, FsConfig, StorageSpace};
use crate::mountpoint;
use crate::network::Network;
use crate::protocol::Chain;
use crate::snapshots::watch::TreeWatch;
use crate::store::{Store, StoreError};
use crate::upload::{Engine, UploadConfig};

/// How the process that asked for the mount learns that it is ready.
pub enum Readiness {
    /// Running in the foreground: nothing to tell but systemd.
    Foreground,
    /// A daemon: the parent waits on this pipe for "ok" and what to tell the person, one line
    /// each, or an error.
    Pipe(File),
}

/// Which side of [`daemonize`] this process is on.
pub enum Role {
    /// The command that asked for the mount: it is ready; these lines are for the person.
    Parent(Vec<String>),
    /// The daemon, which reports on this once it is ready.
    Daemon(Readiness),
}

impl Readiness {
    /// Reports the start-up: ready, with `notices` for the person, or failed.
    fn report(self, result: &anyhow::Result<Vec<String>>) {
        match self {
            Readiness::Pipe(mut pipe) => {
                let msg = match result {
                    Ok(notices) => {
                        std::iter::once("ok".to_string()).chain(notices.iter().cloned()).collect::<Vec<_>>().join("\n")
                    }
                    Err(e) => format!("{e:#}"),
                };
                // The parent may be gone (killed); the daemon goes on regardless.
                let _ = pipe.write_all(msg.as_bytes());
            }
            Readiness::Foreground => {
                if let Ok(notices) = result {
                    notices.iter().for_each(|n| log::warn!("{n}"));
                    notify_systemd("READY=1");
                }
            }
        }
    }
}

/// Tells systemd about the service's state (`READY=1`, `STOPPING=1`) when it runs as a
/// `Type=notify` unit, which sets NOTIFY_SOCKET; does nothing otherwise.
fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name),
        None => SocketAddr::from_pathname(Path::new(&path)),
    };
    let sent = addr.and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr));
    if let Err(e) = sent {
        log::warn!("telling systemd {state:?}: {e}");
    }
}

/// The daemon exited during start-up without a word: its log says why.
#[derive(Debug, thiserror::Error)]
#[error("the daemon exited during start-up; see {}", .0.display())]
pub struct CrashedAtStart(pub std::path::PathBuf);

/// Forks a daemon that logs to `log_file`. In the parent this waits until the daemon reports
/// ([`Role::Parent`], or its error); in the daemon it returns the readiness pipe. Call before any
/// thread.
pub fn daemonize(log_file: &Path) -> anyhow::Result<Role> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is valid for two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating the readiness pipe");
    }
    // SAFETY: pipe2 returned two fresh descriptors that nothing else owns.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .with_context(|| format!("opening log file {}", log_file.display()))?;
    // SAFETY: called before this process starts any thread, as the doc requires.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("forking the daemon"),
        0 => {
            drop(read_end);
            // SAFETY: setsid and dup2 on descriptors this process owns.
            unsafe {
                libc::setsid();
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                libc::dup2(null, 0);
                libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&log), 1);
                libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&log), 2);
            }
            Ok(Role::Daemon(Readiness::Pipe(File::from(write_end))))
        }
        pid => {
            drop(write_end);
            let mut msg = String::new();
            File::from(read_end).read_to_string(&mut msg)?;
            let mut lines = msg.lines();
            if lines.next() == Some("ok") {
                return Ok(Role::Parent(lines.map(str::to_string).collect()));
            }
            // It failed: once it is gone, nothing of it writes to the data dir any more.
            // SAFETY: waiting for our own child; a null status pointer is allowed.
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            match msg.is_empty() {
                true => Err(CrashedAtStart(log_file.to_path_buf()).into()),
                false => bail!("{msg}"),
            }
        }
    }
}

/// Blocks the signals the daemon handles, in this thread and every thread it starts later.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local, then pthread_sigmask on the current thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The kernel's read-ahead on the mount, in KiB.
const READ_AHEAD_KIB: u32 = 4096;

/// How long uploads in progress get to reach a safe point at unmount.
const UPLOAD_GRACE: Duration = Duration::from_secs(10);

/// Everything a mount runs: the runtime of the upload engine and the network clients, the chain
/// connection, the engine, the FUSE session and the threads that keep the store and the cache.
/// Each is stopped and waited for at shutdown, in [`run`].
struct Daemon {
    runtime: tokio::runtime::Runtime,
    network: Network,
    engine: Engine,
    session: fuser::Session<FuseAdapter>,
    metrics: Option<crate::http::Server>,
    store: Arc<Store>,
    housekeeping: Housekeeping,
    /// Tells the async tasks (the engine, the storage watcher, the snapshot writer) to stop.
    stop: tokio::sync::watch::Sender<bool>,
    /// The storage watcher and the snapshot writer.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The threads that work now and then: the store's flush (every half second; sled's own flusher
/// is off, see store/reserve.rs) and the cache limit.
struct Housekeeping {
    stop: Arc<crate::sync::Stop>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Housekeeping {
    fn start(store: Arc<Store>, fs: Arc<Fs>) -> anyhow::Result<Housekeeping> {
        let stop = Arc::new(crate::sync::Stop::default());
        let flusher = {
            let stop = stop.clone();
            std::thread::Builder::new().name("flush".into()).spawn(move || {
                while !stop.wait(Duration::from_millis(500)) {
                    if let Err(e) = store.sync() {
                        crate::log_limited!(log::Level::Error, "flush", "flushing the metadata database: {e}");
                    }
                    store.refill_reserve();
                }
            })?
        };
        let cache = {
            let stop = stop.clone();
            std::thread::Builder::new().name("cache".into()).spawn(move || {
                while !stop.wait(Duration::from_secs(2)) {
                    fs.enforce_cache_limit();
                }
            })?
        };
        Ok(Housekeeping { stop, threads: vec![flusher, cache] })
    }

    fn stop(self) {
        self.stop.stop();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Mounts the filesystem at `mountpoint` (already checked by `mountpoint::preflight`) and serves
/// it until it is unmounted or the process gets SIGTERM, SIGINT or SIGHUP.
pub fn run(mountpoint: &Path, settings: &Settings, ready: Readiness) -> anyhow::Result<()> {
    let signals = block_signals();
    let data_dir = settings.data_dir();
    let (daemon, notices) = match start(mountpoint, settings, &data_dir) {
        Ok(d) => d,
        Err(e) => {
            let result = Err(e);
            ready.report(&result);
            return result.map(|_| ());
        }
    };
    let pid_file = data_dir.join("cessfs.pid");
    write_pid_file(&pid_file, std::process::id())
        .with_context(|| format!("writing the pid file {}", pid_file.display()))?;
    log::info!("mounted {} (data dir {})", mountpoint.display(), data_dir.display());
    ready.report(&Ok(notices));
    let mp = mountpoint.to_path_buf();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut sig = 0;
        // SAFETY: `signals` is the set blocked above; `sig` is valid for writes.
        while unsafe { libc::sigwait(&signals, &mut sig) } == 0 {
            log::info!("signal {sig}: unmounting {}", mp.display());
            if let Err(e) = mountpoint::unmount(&mp) {
                log::warn!("{e:#}; detaching the mount instead");
                if let Err(e) = mountpoint::detach(&mp) {
                    log::error!("unmount on signal failed: {e:#}");
                }
            }
        }
    })?;
    let Daemon { runtime, network, engine, session, metrics, store, housekeeping, stop, tasks } = daemon;
    let uploads = runtime.spawn(async move { engine.run(UPLOAD_GRACE).await });
    let result = match session.run() {
        // The kernel ended the connection: a lazy unmount's last close can race the threads'
        // reads into this instead of a plain end, and so does an abort through
        // /sys/fs/fuse/connections. Nothing more will come either way; what is staged stays.
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {
            log::info!("the kernel closed the FUSE connection");
            Ok(())
        }
        r => r.context("serving the mount"),
    };
    notify_systemd("STOPPING=1");
    // Everything that works on the store stops and is waited for, then the store is made
    // durable and closed; the pid file goes last, so that `cessfs unmount` returns only once
    // the data dir can be mounted again.
    let _ = stop.send(true);
    housekeeping.stop();
    runtime.block_on(async {
        for task in tasks {
            let _ = task.await;
        }
        let _ = uploads.await;
        network.shutdown().await;
        if let Some(server) = metrics {
            server.stop().await;
        }
    });
    // Blocking work still running (a fetch for a reader that is gone) ends at its next step.
    runtime.shutdown_timeout(UPLOAD_GRACE);
    if let Err(e) = store.sync() {
        log::error!("final metadata flush failed: {e}");
    }
    let store = {
        let weak = Arc::downgrade(&store);
        drop(store);
        weak
    };
    if store.strong_count() > 0 {
        log::warn!("the metadata database is still in use at exit; it closes with the process");
    }
    if let Err(e) = write_pid_file(&pid_file, 0) {
        log::warn!("marking the pid file {} as not running: {e}", pid_file.display());
    }
    log::info!("unmounted {}", mountpoint.display());
    result
}

fn start(mountpoint: &Path, settings: &Settings, data_dir: &Path) -> anyhow::Result<(Daemon, Vec<String>)> {
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let store = Store::open(data_dir, uid, gid).map_err(|e| match e {
        StoreError::Sled(sled::Error::Io(io)) if io.to_string().contains("could not acquire lock") => {
            anyhow::anyhow!(
                "data dir {} is in use by another cessfs (use --data-dir for a second mount)",
                data_dir.display()
            )
        }
        e => anyhow::Error::from(e).context(format!("opening data dir {}", data_dir.display())),
    })?;
    let store = Arc::new(store);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("cessfs-net")
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // A data dir mounted before mounts without the chain; a fresh one needs it (its tree may be
    // on the chain, and a key may be needed).
    let mounted_before = crate::keys::mounted_before(&store)?;
    let tree_undecided = store.meta(TREE_ORIGIN)?.is_none() && store.dir_is_empty(crate::store::ROOT_INO)?;
    let network = runtime.block_on(Network::connect(settings, data_dir, mounted_before && !tree_undecided))?;
    let mut notices = Vec::new();
    let master = runtime.block_on(crate::keys::resolve(settings, &store, &*network.chain, &mut notices))?;
    // Each territory has its own keys, so equal bytes in two territories never share a FID.
    let master = master.map(|m| m.for_territory(&settings.territory()));
    let pace = Arc::new(crate::pace::Pace::new(settings.bwlimit()?));
    let commits = settings.commits.unwrap_or(true)
        && settings.snapshot_config().is_some()
        && master.as_ref().is_some_and(|m| m.names().is_some() && m.blobs().is_some());
    let kept_free = crate::upload::kept_free(settings.snapshot_config().is_some());
    let config = UploadConfig {
        quiet_delay: settings.quiet_delay(),
        parallel: settings.parallel_uploads.unwrap_or(2).max(1),
        territory: settings.territory(),
        master,
        stall: settings.miner_stall(),
        pace: Some(pace.clone()),
        report_timeout: Duration::from_secs(if settings.chain.is_none() { 30 } else { 600 }),
        poll: Duration::from_millis(if settings.chain.is_none() { 25 } else { 3000 }),
        pack_below: settings.pack_below()?,
        commits,
        kept_free,
        finality_lag: network.chain.reads_lag(),
    };
    let fetcher = Arc::new(Fetcher::new(
        network.chain.clone(),
        network.signer.clone(),
        config.master.clone(),
        settings.miner_stall(),
        Some(pace.clone()),
    ));
    let names = config.master.as_ref().and_then(|m| m.names()).cloned();
    let blobs = config.master.as_ref().and_then(|m| m.blobs()).cloned().filter(|_| commits);
    let tree = TreeSetup { settings, runtime: &runtime, network: &network, store: &store, fetcher: &fetcher };
    let (follower, restored_loader) = tree.prepare(names.as_ref(), tree_undecided, &mut notices)?;
    // A restored tree still being loaded (restored now, or before a restart) loads the rest
    // through the mount: directories when first opened, the others in the background.
    let tree_load = match (store.loading_tree()?, names.clone()) {
        (Some(loading), Some(names)) => {
            let loader = restored_loader.unwrap_or_else(|| {
                let handle = runtime.handle().clone();
                Arc::new(crate::snapshots::load::DirLoader::new(
                    fetcher.clone(),
                    names.clone(),
                    handle,
                    &loading.tree_files,
                ))
            });
            Some((loader, names))
        }
        _ => None,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let snapshot_flags = Arc::new(crate::fs::SnapshotFlags::default());
    let snapshot_config = settings.snapshot_config().filter(|_| names.is_some());
    // What the tree's snapshots on chain refer to is never deleted, whether this mount writes
    // them or not.
    let watch = names.filter(|_| !settings.read_only()).map(|names| {
        let tree = crate::snapshots::TreeOnChain {
            chain: network.chain.clone(),
            territory: settings.territory(),
            names,
            blobs: blobs.clone(),
        };
        let writes = snapshot_config.is_some();
        Arc::new(TreeWatch::new(store.clone(), snapshot_flags.clone(), tree, fetcher.clone(), writes))
    });
    // A writer that another mount has overtaken says so on the terminal, not only in the log
    // (a slow or unreachable chain does not hold the mount up: the writer looks again later).
    if let Some(watch) = watch.as_ref().filter(|_| snapshot_config.is_some() && !tree_undecided) {
        let _ = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(15), watch.look()).await });
        if let Some(why) = crate::sync::lock(&snapshot_flags.stopped).clone() {
            notices.push(format!(
                "{why}: this mount writes no snapshots, deletes nothing from the chain and keeps its local \
                 copies; remount it on a fresh data dir to take up the newer tree"
            ));
        }
    }
    let engine = Engine::new(
        store.clone(),
        network.chain.clone(),
        network.signer.clone(),
        config,
        Some(fetcher.clone()),
        watch.clone(),
        stopped.clone(),
    );
    let mut fs = Fs::new(store.clone(), FsConfig { passthrough: false, cache_size: settings.cache_size()? });
    fs.set_chain_health(network.health.clone());
    fs.set_pushes(engine.pushes());
    fs.set_pace(pace.clone());
    if snapshot_config.is_some() || settings.read_only() {
        fs.set_snapshot_flags(snapshot_flags.clone());
    }
    if let (Some(_), Some(watch)) = (&snapshot_config, &watch) {
        fs.set_collector(Arc::new(crate::collect::OnDemand::new(
            store.clone(),
            watch.clone(),
            snapshot_flags.clone(),
            runtime.handle().clone(),
            stop.subscribe(),
        )));
    }
    fs.set_cold_reader(ColdReader { fetcher: fetcher.clone(), runtime: runtime.handle().clone(), read_ahead: 2 });
    if let Some((loader, _)) = &tree_load {
        fs.set_tree_loader(loader.clone());
    }
    let fs = Arc::new(fs);
    let housekeeping = Housekeeping::start(store.clone(), fs.clone())?;
    let refresh = Duration::from_secs(if settings.chain.is_none() { 1 } else { 30 });
    let watched = watch_storage_space(
        Arc::downgrade(&fs),
        engine.clone(),
        network.chain.clone(),
        settings.territory(),
        refresh,
        kept_free,
        stopped,
    );
    let mut tasks = vec![runtime.spawn(watched)];
    if let Some(follower) = follower {
        tasks.push(runtime.spawn(follower.run(settings.poll_interval(), stop.subscribe())));
    }
    if let Some((loader, names)) = tree_load {
        let load = crate::snapshots::load::Load {
            fs: fs.clone(),
            store: store.clone(),
            loader,
            fetcher: fetcher.clone(),
            chain: network.chain.clone(),
            names,
            flags: snapshot_flags.clone(),
        };
        tasks.push(runtime.spawn(load.run(stop.subscribe())));
    }
    if let (Some(config), Some(watch)) = (snapshot_config, watch) {
        let sweeper = crate::collect::Sweeper {
            store: store.clone(),
            watch: watch.clone(),
            flags: snapshot_flags.clone(),
            after: config.sweep_after,
        };
        let writer = crate::snapshots::Writer::new(store.clone(), snapshot_flags, watch, config)?;
        tasks.push(runtime.spawn(sweeper.run(stop.subscribe())));
        tasks.push(runtime.spawn(writer.run(stop.subscribe())));
    }
    let metrics = match settings.metrics_addr()? {
        Some(addr) => {
            let server = runtime.block_on(crate::metrics::serve(addr, fs.clone()))?;
            log::info!("metrics at http://{}/metrics", server.addr());
            Some(server)
        }
        None => None,
    };
    let adapter = FuseAdapter::new(fs, settings.passthrough.unwrap_or(true));
    let source = format!("cessfs:{}", data_dir.display());
    // A system mount (fstab, cessfs@.service) serves the machine's users, under the kernel's
    // permission checks; a user's own mount serves that user.
    let allow_other = settings.allow_other.unwrap_or(settings.system.is_some());
    let mut config = fuser::Config::default();
    config.acl = if allow_other { fuser::SessionACL::All } else { fuser::SessionACL::Owner };
    config.n_threads = Some(settings.threads());
    config.clone_fd = true;
    let mounting = || format!("mounting {}", mountpoint.display());
    let session = if mountpoint::is_root() {
        let fd =
            mountpoint::mount_as_root(mountpoint, &source, allow_other, settings.read_only()).with_context(mounting)?;
        let acl = config.acl;
        fuser::Session::from_fd(adapter, fd, acl, config).with_context(mounting)?
    } else {
        config.mount_options = vec![
            fuser::MountOption::FSName(source),
            fuser::MountOption::Subtype("cessfs".into()),
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::NoAtime,
        ];
        if settings.read_only() {
            config.mount_options.push(fuser::MountOption::RO);
        }
        fuser::Session::new(adapter, mountpoint, &config).with_context(mounting)?
    };
    // Larger read requests for reads through the daemon (cold files); passthrough reads use the
    // read-ahead of the disk underneath.
    if let Err(e) = mountpoint::set_read_ahead(mountpoint, READ_AHEAD_KIB) {
        log::debug!("keeping the kernel's read-ahead: {e:#}");
    }
    Ok((Daemon { runtime, network, engine, session, metrics, store, housekeeping, stop, tasks }, notices))
}

/// The meta record of where this data dir's tree came from: `new`, `fresh` (`--fresh`), or
/// `restored G` (snapshot G). Until it is written, an empty data dir restores its tree first.
const TREE_ORIGIN: &[u8] = b"tree-origin";

/// What a mount needs to set its tree up.
struct TreeSetup<'a> {
    settings: &'a Settings,
    runtime: &'a tokio::runtime::Runtime,
    network: &'a Network,
    store: &'a Arc<Store>,
    fetcher: &'a Arc<Fetcher>,
}

impl TreeSetup<'_> {
    /// Sets the tree up before the mount shows it: a read-only view shows the newest snapshot
    /// (and returns the follower that keeps it so); an empty data dir whose tree is undecided
    /// restores the newest snapshot, unless `--fresh` (and returns what reads the rest of a
    /// tree restored lazily).
    fn prepare(
        &self,
        names: Option<&crate::format::NameKey>,
        undecided: bool,
        notices: &mut Vec<String>,
    ) -> anyhow::Result<(Option<crate::snapshots::restore::Follower>, Option<Arc<crate::snapshots::load::DirLoader>>)>
    {
        let territory = self.settings.territory();
        // A view and a writable tree never share a data dir: a view replaces its tree with
        // another mount's, and a writable tree would take the view's records for its own.
        let view = self.store.view_generation()?.is_some();
        let writable = self.store.meta(TREE_ORIGIN)?.is_some() || (!undecided && !view);
        if self.settings.read_only() && writable {
            bail!(
                "the data dir {} holds a writable tree: give --read-only a data dir of its own (--data-dir)",
                self.settings.data_dir().display()
            );
        }
        if !self.settings.read_only() && view {
            bail!(
                "the data dir {} is a read-only view of a tree: mount it with --read-only, or use another data dir",
                self.settings.data_dir().display()
            );
        }
        if self.settings.read_only() {
            let Some(names) = names else {
                bail!("a read-only view shows the tree's snapshots, which need the encryption key (not --plain)");
            };
            let follower = crate::snapshots::restore::Follower {
                chain: self.network.chain.clone(),
                fetcher: self.fetcher.clone(),
                store: self.store.clone(),
                territory,
                names: names.clone(),
                pinned: self.settings.generation,
                finder: Default::default(),
            };
            match self.runtime.block_on(follower.sync()) {
                Ok(Some(g)) => notices.push(format!("read-only: showing tree snapshot {g}")),
                Ok(None) => notices.push("read-only: the territory holds no tree snapshot of this key yet".into()),
                Err(e) if !undecided && self.settings.generation.is_none() => {
                    log::warn!("showing the snapshot shown before: {e:#}");
                }
                Err(e) => return Err(e),
            }
            return Ok((self.settings.generation.is_none().then_some(follower), None));
        }
        if !undecided {
            return Ok((None, None));
        }
        // The tree's files on chain, read from the tail of the hold list as far back as it takes
        // to know the newest tree (every record, for a tree beginning here): the snapshot to
        // restore, the baseline of snapshots that are this tree's past, and the newest block a
        // file of it was stored at.
        let fresh = self.settings.fresh.unwrap_or(false);
        let chain = &*self.network.chain;
        let mut search = names.map(|n| {
            self.runtime.block_on(async {
                let mut search = crate::snapshots::restore::TailSearch::start(chain, &territory, n).await?;
                if fresh {
                    search.read_all().await?;
                }
                Ok::<_, crate::protocol::ChainError>(search)
            })
        });
        let chosen = match (search.as_mut(), names, fresh) {
            (Some(search), Some(names), false) => {
                let search = search.as_mut().map_err(|e| e.clone())?;
                let chosen = self.runtime.block_on(crate::snapshots::restore::choose(search, self.fetcher, names))?;
                search.log_reach();
                chosen.map(|c| (c, names))
            }
            _ => None,
        };
        crate::hooks::reached("restore-chosen");
        // Snapshots already on chain are this tree's past (a dead machine's last one may be
        // newer than what was restored): only newer ones tell of another writer.
        let mut meta: Vec<(&[u8], Vec<u8>)> = Vec::new();
        let search = search.map(Result::ok);
        if let Some(search) = &search {
            let found = search.as_ref().map(|s| s.found()).unwrap_or_default();
            let baseline = found.iter().map(|s| s.generation).max().unwrap_or(0);
            meta.push((crate::snapshots::BASELINE, baseline.to_be_bytes().to_vec()));
        }
        // The newest block a file of this key was stored at, if the chain said: what a tree
        // beginning here finds is its past, or another lineage's.
        let newest_block = search.flatten().map(|s| s.named().iter().map(|n| n.completion).max().unwrap_or(0));
        let Some((chosen, names)) = chosen else {
            // A tree beginning here collects nothing of what was stored before (unknown: nothing
            // at all).
            if let Some(block) = newest_block {
                meta.push(crate::store::lineage::window_meta(block, block));
            }
            let origin = if self.settings.fresh.unwrap_or(false) { "fresh" } else { "new" };
            if origin == "new" && names.is_some() {
                self.note_other_trees(notices);
            }
            meta.push((TREE_ORIGIN, origin.as_bytes().to_vec()));
            for (name, value) in &meta {
                self.store.set_meta(name, value)?;
            }
            return Ok((None, None));
        };
        // Files of the tree stored after this block are another mount's (the sweep's rule).
        meta.push(crate::store::lineage::pending_meta(chosen.lineage_from(), newest_block.unwrap_or(0)));
        if let Some(block) = newest_block {
            meta.push(crate::store::lineage::window_meta(chosen.lineage_from(), block));
        }
        meta.push((TREE_ORIGIN, format!("restored {}", chosen.generation()).into_bytes()));
        // One step: a crash before it ends leaves the data dir empty, and the next mount restores
        // again from the start.
        let outcome = chosen.restore(self.store, &territory, names, meta)?;
        crate::hooks::reached("restore-done");
        let said = describe_restore(&outcome);
        log::info!("{said}");
        notices.push(said);
        Ok((None, chosen.loader()))
    }
}

impl TreeSetup<'_> {
    /// Says so when the territory holds files of the account but no tree of this key: a wrong
    /// key file would otherwise look like an empty tree.
    fn note_other_trees(&self, notices: &mut Vec<String>) {
        let territory = self.settings.territory();
        let account = self.network.chain.account();
        let held = self.runtime.block_on(self.network.chain.held_files(&account));
        let count = held.map_or(0, |h| h.iter().filter(|f| f.territory == territory).count());
        if count > 0 {
            let said = format!(
                "territory {:?} holds {} of this account but no tree snapshot of this key: \
                 starting an empty tree. If a tree was kept there, it was with another key (--key-file)",
                String::from_utf8_lossy(&territory),
                crate::words::count(count as u64, "file")
            );
            log::warn!("{said}");
            notices.push(said);
        }
    }
}

/// What a restore brought back, in words.
fn describe_restore(o: &crate::snapshots::restore::Outcome) -> String {
    let written = std::time::UNIX_EPOCH + Duration::from_secs(o.written_at.max(0) as u64);
    let written = crate::protocol::utc(written);
    let mut said = match o.loading {
        None => format!(
            "restored the tree from snapshot {} (written {written}): {}; files are fetched from CESS when read",
            o.generation,
            o.restored.counts()
        ),
        Some(nodes) => {
            // The root directory itself is not among what it holds.
            let held = crate::store::Restored { dirs: o.restored.dirs.saturating_sub(1), ..o.restored };
            format!(
                "restored the tree from snapshot {} (written {written}), {} in all: its root directory, holding {}, \
                 shows now; the rest loads in the background (a directory you open loads at once), and files are \
                 fetched from CESS when read",
                o.generation,
                crate::words::count(nodes, "node"),
                held.counts()
            )
        }
    };
    for (generation, why) in &o.skipped {
        said.push_str(&format!("\nthe newer snapshot {generation} could not be read: {why}"));
    }
    said
}

/// Keeps the territory's space in the filesystem's statfs, read every `refresh`, for as long as
/// the filesystem lives, `kept_free` of its charge aside (no file may take it). An unreachable
/// chain keeps the last figures. A territory that grows, frees space or changes state tells the
/// engine, which tries again the files that failed for its sake.
async fn watch_storage_space(
    fs: std::sync::Weak<Fs>,
    engine: Engine,
    chain: Arc<dyn Chain>,
    territory: Vec<u8>,
    refresh: Duration,
    kept_free: u128,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let owner = chain.account();
    let mut last: Option<Option<crate::protocol::TerritoryInfo>> = None;
    loop {
        let read = chain.territory(&owner, &territory).await;
        if let (Ok(now), Some(before)) = (&read, &last)
            && territory_grew(before.as_ref(), now.as_ref())
        {
            log::info!(
                "territory {:?} changed: trying again the files that failed for its sake",
                String::from_utf8_lossy(&territory)
            );
            engine.territory_changed();
        }
        if let Ok(now) = &read {
            last = Some(now.clone());
        }
        let space = match read {
            Ok(Some(t)) => Some(t.content_space(kept_free)),
            Ok(None) => Some((0, 0)),
            Err(e) => {
                log::debug!("reading territory space: {e}");
                None
            }
        };
        let Some(fs) = fs.upgrade() else { return };
        if let Some((total, free)) = space {
            fs.set_storage_space(StorageSpace { total, free });
        }
        drop(fs);
        tokio::select! {
            _ = tokio::time::sleep(refresh) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Whether a territory changed in a way that may let in a file that could not go before: it
/// appeared, changed state, or has more space in all or free. (This mount's own deletions tell
/// the engine directly, so a file that took room between two reads cannot hide them.)
fn territory_grew(
    before: Option<&crate::protocol::TerritoryInfo>,
    now: Option<&crate::protocol::TerritoryInfo>,
) -> bool {
    match (before, now) {
        (None, Some(_)) => true,
        (Some(b), Some(n)) => {
            b.state != n.state || n.total_space > b.total_space || n.remaining_space > b.remaining_space
        }
        _ => false,
    }
}

/// Writes the pid file in place: the file is kept from one mount to the next (0 when none
/// runs), so that a restart on a full disk needs no new block for it (a few bytes within the
/// block it has).
fn write_pid_file(path: &Path, pid: u32) -> std::io::Result<()> {
    use std::io::Write;
    let text = format!("{pid}\n");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
    file.write_all(text.as_bytes())?;
    file.set_len(text.len() as u64)
}

/// Waits until the daemon of `data_dir` has finished (it sets its pid file to 0 once its store
/// is closed) or is gone, up to `timeout`.
pub fn wait_for_exit(data_dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let pid_file = data_dir.join("cessfs.pid");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let Ok(pid) = std::fs::read_to_string(&pid_file) else { return Ok(()) };
        let Some(pid) = pid.trim().parse::<i32>().ok().filter(|p| *p > 0) else { return Ok(()) };
        // A zombie (exited, not yet reaped by its parent) counts as gone.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        let alive = state.as_deref().and_then(|s| s.rsplit_once(") ")).is_some_and(|(_, rest)| !rest.starts_with('Z'));
        if !alive {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!("the cessfs daemon (pid {pid}) is still running after {}s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
