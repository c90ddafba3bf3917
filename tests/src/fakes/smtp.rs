//! An SMTP server over real TCP: it takes messages (several per connection,
//! as a pooling client sends them), records each with its envelope, and
//! misbehaves on demand: answer the next messages with a code (4xx: try
//! later; 5xx: refused), refuse every recipient, or drop the connection
//! after the message instead of answering (it is not kept then).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One message as it arrived.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The message after DATA, dot-unstuffed, CRLF line ends.
    pub data: String,
}

/// How the end of DATA is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Code(u16),
    /// Close the connection without answering.
    Drop,
}

#[derive(Default)]
struct Behaviour {
    next: Vec<Answer>,
    always: Option<Answer>,
    refuse_recipients: Option<u16>,
}

#[derive(Default)]
struct St {
    behaviour: Mutex<Behaviour>,
    mails: Mutex<Vec<Mail>>,
    /// Every answer given to the end of a DATA.
    answers: Mutex<Vec<Answer>>,
}

pub struct FakeSmtp {
    pub port: u16,
    state: Arc<St>,
    task: JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeSmtp {
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(St::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(session(socket, st.clone()));
            }
        });
        Ok(FakeSmtp { port, state, task })
    }

    /// Answer the next messages with these, one each.
    pub fn answer_next(&self, answers: &[Answer]) {
        lock(&self.state.behaviour).next = answers.to_vec();
    }

    /// Answer every message with this (None: 250).
    pub fn answer_always(&self, answer: Option<Answer>) {
        lock(&self.state.behaviour).always = answer;
    }

    /// Refuse every RCPT TO with this code (None: accept).
    pub fn refuse_recipients(&self, code: Option<u16>) {
        lock(&self.state.behaviour).refuse_recipients = code;
    }

    /// The messages accepted (answered 250).
    pub fn mails(&self) -> Vec<Mail> {
        lock(&self.state.mails).clone()
    }

    pub fn answers(&self) -> Vec<Answer> {
        lock(&self.state.answers).clone()
    }

    /// Waits until `n` messages were accepted, up to `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Mail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.mails();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn text(code: u16) -> &'static str {
    match code {
        250 => "2.0.0 Ok: queued",
        421 => "4.3.2 Service not available, closing transmission channel",
        450 | 451 => "4.3.0 Temporary failure, try again later",
        452 => "4.2.2 Mailbox full",
        550 => "5.1.1 Recipient address rejected: User unknown",
        552 => "5.3.4 Message size exceeds fixed limit",
        554 => "5.7.1 Message rejected as spam",
        _ => "Error",
    }
}

async fn session(socket: TcpStream, st: Arc<St>) {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read);
    if write
        .write_all(b"220 fake.smtp ESMTP ready\r\n")
        .await
        .is_err()
    {
        return;
    }
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let cmd = line.trim_end().to_owned();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-fake.smtp\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n".into()
        } else if upper.starts_with("HELO") {
            "250 fake.smtp\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            from = cmd[10..].trim().trim_matches(['<', '>']).to_owned();
            to.clear();
            "250 2.1.0 Ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let refuse = lock(&st.behaviour).refuse_recipients;
            match refuse {
                Some(code) => format!("{code} {}\r\n", text(code)),
                None => {
                    to.push(cmd[8..].trim().trim_matches(['<', '>']).to_owned());
                    "250 2.1.5 Ok\r\n".into()
                }
            }
        } else if upper == "DATA" {
            if to.is_empty() {
                "554 5.5.1 No valid recipients\r\n".into()
            } else {
                if write
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let mut data = String::new();
                loop {
                    line.clear();
                    match lines.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let unstuffed = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(unstuffed);
                }
                let answer = {
                    let mut b = lock(&st.behaviour);
                    if b.next.is_empty() {
                        b.always.unwrap_or(Answer::Code(250))
                    } else {
                        b.next.remove(0)
                    }
                };
                lock(&st.answers).push(answer);
                match answer {
                    Answer::Drop => return,
                    Answer::Code(250) => {
                        lock(&st.mails).push(Mail {
                            from: from.clone(),
                            to: to.clone(),
                            data,
                        });
                        "250 2.0.0 Ok: queued as FAKE\r\n".into()
                    }
                    Answer::Code(code) => format!("{code} {}\r\n", text(code)),
                }
            }
        } else if upper == "RSET" {
            from.clear();
            to.clear();
            "250 2.0.0 Ok\r\n".into()
        } else if upper == "NOOP" {
            "250 2.0.0 Ok\r\n".into()
        } else if upper == "QUIT" {
            let _ = write.write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else {
            "502 5.5.2 Error: command not recognized\r\n".into()
        };
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
