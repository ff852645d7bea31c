//! Child processes of the bench (Mosquitto, responders, daemons): killed on drop, and listed so
//! that the watchdog can kill whatever is left when it fires.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::free_port;
use crate::rounds::Broker;

/// Child processes to kill if the watchdog fires.
pub static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A child process, killed on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl Proc {
    pub fn new(child: Child, port: u16, log: PathBuf) -> Proc {
        CHILDREN.lock().expect("lock").push(child.id());
        Proc {
            child: Some(child),
            port,
            log,
        }
    }

    pub fn mosquitto(exe: &Path, dir: &Path) -> Proc {
        for _ in 0..3 {
            let port = free_port();
            let conf = dir.join("mosquitto.conf");
            fs::write(
                &conf,
                format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n\
                     max_queued_messages 0\npersistence false\nuser root\nlog_dest stderr\n\
                     log_type error\nlog_type warning\n"
                ),
            )
            .expect("write mosquitto.conf");
            let log = dir.join("mosquitto.log");
            let out = fs::File::create(&log).expect("mosquitto log");
            let child = Command::new(exe)
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("clone log handle"))
                .stderr(out)
                .spawn()
                .expect("spawn mosquitto");
            let mut proc = Proc::new(child, port, log);
            let deadline = Instant::now() + Duration::from_secs(10);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            while Instant::now() < deadline && proc.running() {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return proc;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "mosquitto did not start on port {port}: {}",
                fs::read_to_string(&proc.log).unwrap_or_default()
            );
            proc.stop();
        }
        panic!("mosquitto did not start after 3 attempts");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// This process as the bench's broker.
    pub fn as_broker(&self) -> Broker {
        Broker {
            port: self.port,
            pids: vec![self.pid()],
        }
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    pub fn log_len(&self) -> u64 {
        fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            CHILDREN.lock().expect("lock").retain(|p| *p != child.id());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn kill_children() {
    for pid in CHILDREN.lock().map(|c| c.clone()).unwrap_or_default() {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
}
