//! Crash consistency: `ipxe-edge serve` is killed with SIGKILL in the middle of a burst of
//! redemptions (hundreds of tokens, 16 clients), then restarted on its data directory. No token
//! is ever answered `200` twice; tokens recorded as used whose answer was lost in the crash are
//! counted and printed (the at-most-once cost the README documents).

use ipxe_edge_tests::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

const BIN: &str = env!("CARGO_BIN_EXE_ipxe-edge");
const TOKENS: usize = 400;
const CLIENTS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Secret,
    Gone,
    Lost,
    Other(u16),
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

async fn redeem(client: &reqwest::Client, url: &str) -> Answer {
    match client.get(url).send().await {
        Ok(r) => match r.status().as_u16() {
            200 => match r.bytes().await {
                Ok(_) => Answer::Secret,
                Err(_) => Answer::Lost,
            },
            410 => Answer::Gone,
            s => Answer::Other(s),
        },
        Err(_) => Answer::Lost,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_burst_never_answers_a_token_twice() {
    let data = temp_dir("serve-crash");
    let ports = (free_port(), free_port(), free_port());
    let serve = ServeProcess::start_on(BIN, &data, ports, &[]).expect("serve starts");
    let ca = read(&data.join("pki/ca.crt"));
    let mut identity = read(&data.join("pki/gateways/demo.crt"));
    identity.extend(read(&data.join("pki/gateways/demo.key")));
    let gateway = https_client(&ca, Some(&identity));
    let anonymous = https_client(&ca, None);

    let mut urls = Vec::with_capacity(TOKENS);
    for _ in 0..TOKENS {
        let script =
            gateway.get(format!("{}?buildarch=x86_64", serve.boot_url())).send().await.unwrap().text().await.unwrap();
        let url = script.split("b2c.extra_args_url=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
        urls.push(url);
    }

    // Phase 1: 16 clients drain the tokens; the server is killed part-way.
    let queue = Arc::new(Mutex::new(urls.clone()));
    let answers = Arc::new(Mutex::new(HashMap::new()));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (queue, answers, client) = (queue.clone(), answers.clone(), anonymous.clone());
        clients.push(tokio::spawn(async move {
            loop {
                let Some(url) = queue.lock().await.pop() else { break };
                let answer = redeem(&client, &url).await;
                answers.lock().await.insert(url, answer);
            }
        }));
    }
    loop {
        let done = answers.lock().await.len();
        if done >= TOKENS / 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut serve = serve;
    serve.child.kill().unwrap(); // SIGKILL
    serve.child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let first: HashMap<String, Answer> = answers.lock().await.clone();

    // Phase 2: restart on the same data and ports; every token again.
    let serve = ServeProcess::start_on(BIN, &data, ports, &[]).expect("serve restarts");
    let fresh = https_client(&ca, None);
    let mut twice = 0;
    let (mut lost_spent, mut lost_recovered, mut served, mut unanswered) = (0, 0, 0, 0);
    for url in &urls {
        let before = first.get(url).copied().unwrap_or(Answer::Lost);
        let after = redeem(&fresh, url).await;
        match (before, after) {
            (Answer::Secret, Answer::Secret) => twice += 1,
            (Answer::Secret, _) => served += 1,
            (Answer::Lost, Answer::Gone) => lost_spent += 1,
            (Answer::Lost, Answer::Secret) => lost_recovered += 1,
            (Answer::Lost, other) => panic!("token unanswered before the crash answered {other:?} after it"),
            (other, _) => {
                unanswered += 1;
                assert!(matches!(other, Answer::Gone), "unexpected answer before the crash: {other:?}")
            }
        }
    }
    drop(serve);
    println!(
        "crash test: {TOKENS} tokens, {CLIENTS} clients, SIGKILL after {} answers: {served} served before the crash, \
         {lost_recovered} unanswered and still redeemable after it, {lost_spent} recorded as used with the answer lost, \
         {twice} answered twice",
        TOKENS / 3
    );
    assert_eq!(unanswered, 0, "no token may have been refused before its first use");
    assert_eq!(twice, 0, "a token was answered 200 twice");
    assert!(served > 0, "the burst did not get going before the kill");
}
