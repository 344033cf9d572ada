//! The device side of jobs over MQTT, as `awsiot.iotjobs` and the Greengrass nucleus use it:
//! requests on `$aws/things/<thing>/jobs/…` answered on `<request>/accepted` or `/rejected` to
//! the asking device alone, `notify` / `notify-next` published as the thing's pending list and
//! next execution change. Namespaced jobs (`namespaceId`) are seen only through
//! `<jobId>/namespace-<id>/get|update` and `notify[-next]-namespace-<id>`, plain ones only
//! through the plain topics. All times are epoch seconds (awsiotsdk rejects milliseconds).

use crate::JobsService;
use crate::requests::{
    self, Op, Rejected, Request, data, document, execution_state, rejected, summary,
};
use crate::store;
use lichen_fleet_mqtt::{DeviceEndpoint, DevicePublish, EndpointError, QoS};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use tokio::sync::mpsc;

const FILTER: &str = "$aws/things/+/jobs/#";
/// Requests answered in one transaction at most.
const MAX_BATCH: usize = 256;

pub(crate) fn serve(svc: JobsService, endpoint: &DeviceEndpoint) -> Result<(), EndpointError> {
    let mut topics = endpoint.serve_topics(FILTER)?;
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<(String, String)>();
    *svc.inner.outbox.lock().unwrap_or_else(|e| e.into_inner()) = Some(out_tx);
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some((topic, payload)) = out_rx.recv().await {
            if let Err(e) = ep
                .publish(&topic, payload.into(), QoS::AtLeastOnce, false)
                .await
            {
                tracing::warn!(topic, "jobs notification: {e}");
            }
        }
    });
    let ep = endpoint.clone();
    // One batch at a time, in arrival order (so one thing's requests are answered in order);
    // what arrives while a batch commits forms the next.
    tokio::spawn(async move {
        while let Some(first) = topics.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match topics.try_recv() {
                    Some(p) => batch.push(p),
                    None => break,
                }
            }
            let s = svc.clone();
            let Ok(replies) = tokio::task::spawn_blocking(move || handle(&s, batch)).await else {
                continue;
            };
            for (client_id, topic, body) in replies {
                match ep.publish_to(
                    &client_id,
                    &topic,
                    body.to_string().into(),
                    QoS::AtLeastOnce,
                ) {
                    Ok(true) => {}
                    Ok(false) => tracing::debug!(
                        client_id,
                        topic,
                        "jobs reply not delivered: the device does not subscribe to it"
                    ),
                    Err(e) => tracing::warn!(client_id, topic, "jobs reply: {e}"),
                }
            }
        }
    });
    Ok(())
}

fn now_secs() -> i64 {
    crate::now_ms().div_euclid(1000)
}

/// The notify / notify-next messages for each (thing, namespace) after a change to its
/// executions, all read in one transaction. Read and compared under the `last_next` lock, and
/// queued before it is released, so that two threads announcing changes to one thing cannot
/// publish a stale `notify-next` last.
pub(crate) fn notify(
    svc: &JobsService,
    things: &[(String, Option<String>)],
    out: &mpsc::UnboundedSender<(String, String)>,
) -> crate::Result<()> {
    let mut last = svc
        .inner
        .last_next
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let states = svc.read(|tx| {
        let mut docs: BTreeMap<String, String> = BTreeMap::new();
        let mut states = Vec::with_capacity(things.len());
        for (thing, ns) in things {
            let (running, queued) = store::pending(tx, thing, ns.as_deref())?;
            let next = match running.first().or(queued.first()) {
                Some(e) => {
                    if !docs.contains_key(&e.job_id) {
                        docs.insert(e.job_id.clone(), document(tx, &e.job_id)?);
                    }
                    Some((e.clone(), docs[&e.job_id].clone()))
                }
                None => None,
            };
            states.push((running, queued, next));
        }
        Ok(states)
    })?;
    let now = now_secs();
    for ((thing, ns), (running, queued, next)) in things.iter().zip(states) {
        let suffix = ns
            .as_ref()
            .map(|n| format!("-namespace-{n}"))
            .unwrap_or_default();
        let base = format!("$aws/things/{thing}/jobs");
        let mut jobs = Map::new();
        if !queued.is_empty() {
            jobs.insert("QUEUED".into(), queued.iter().map(summary).collect());
        }
        if !running.is_empty() {
            jobs.insert("IN_PROGRESS".into(), running.iter().map(summary).collect());
        }
        let _ = out.send((
            format!("{base}/notify{suffix}"),
            json!({"jobs": jobs, "timestamp": now}).to_string(),
        ));
        let next_id = next.as_ref().map(|(e, _)| e.job_id.clone());
        let key = (thing.clone(), ns.clone());
        if last.get(&key) != Some(&next_id) {
            last.insert(key, next_id);
            let mut body = json!({"timestamp": now});
            if let Some((e, doc)) = &next {
                body["execution"] = data(e, Some(doc));
            }
            let _ = out.send((format!("{base}/notify-next{suffix}"), body.to_string()));
        }
    }
    Ok(())
}

/// Answers a batch of device publishes: (client id, reply topic, payload) for each that gets
/// an answer.
fn handle(svc: &JobsService, batch: Vec<DevicePublish>) -> Vec<(String, String, Value)> {
    let mut replies = Vec::with_capacity(batch.len());
    let mut requests = vec![];
    let mut pending = vec![];
    for p in batch {
        match parse(&p) {
            Parsed::Silent => {}
            Parsed::Refused(topic, body) => replies.push((p.client_id, topic, body)),
            Parsed::Request(q, token) => {
                requests.push(q);
                pending.push((p.client_id, p.topic, token));
            }
        }
    }
    if requests.is_empty() {
        return replies;
    }
    let answers = requests::run(svc, &requests);
    for ((client_id, topic, token), answer) in pending.into_iter().zip(answers) {
        let (topic, body) = match answer {
            Ok(mut body) => {
                body["timestamp"] = json!(now_secs());
                if let Some(t) = token {
                    body["clientToken"] = t;
                }
                (format!("{topic}/accepted"), body)
            }
            Err(r) => reply_rejected(&topic, token, r),
        };
        replies.push((client_id, topic, body));
    }
    replies
}

enum Parsed {
    /// Not a request (a device echoing a reply topic): no answer.
    Silent,
    /// Refused before it reached the registry: the reply.
    Refused(String, Value),
    /// A request and its clientToken.
    Request(Request, Option<Value>),
}

fn parse(p: &DevicePublish) -> Parsed {
    let parts: Vec<&str> = p.topic.split('/').collect();
    // $aws / things / <thing> / jobs / ...
    let (Some(thing), Some(rest)) = (parts.get(2), parts.get(4..)) else {
        return Parsed::Silent;
    };
    if matches!(rest.last(), Some(&"accepted") | Some(&"rejected")) {
        return Parsed::Silent;
    }
    let refused = |token, r| {
        let (t, b) = reply_rejected(&p.topic, token, r);
        Parsed::Refused(t, b)
    };
    let (op, ns) = match rest {
        ["get"] => (Op::Pending, None),
        ["start-next"] => (Op::StartNext, None),
        [job, "get"] => (Op::Describe(job.to_string()), None),
        [job, "update"] => (Op::Update(job.to_string()), None),
        [job, ns, "get"] if ns.starts_with("namespace-") => (
            Op::Describe(job.to_string()),
            Some(&ns["namespace-".len()..]),
        ),
        [job, ns, "update"] if ns.starts_with("namespace-") => {
            (Op::Update(job.to_string()), Some(&ns["namespace-".len()..]))
        }
        _ => {
            return refused(
                None,
                rejected(
                    "InvalidTopic",
                    format!("{} is not a jobs request topic", p.topic),
                ),
            );
        }
    };
    let payload: Map<String, Value> = if p.payload.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice(&p.payload) {
            Ok(Value::Object(m)) => m,
            _ => {
                return refused(
                    None,
                    rejected("InvalidJson", "the payload is not a JSON object"),
                );
            }
        }
    };
    let token = payload.get("clientToken").cloned();
    if p.thing_name.as_deref() != Some(thing) {
        return refused(
            token,
            rejected(
                "InvalidRequest",
                format!(
                    "this connection is not thing {thing:?}: a device reads and updates only \
                     its own jobs"
                ),
            ),
        );
    }
    let q = Request {
        thing: thing.to_string(),
        ns: ns.map(str::to_string),
        op,
        payload,
    };
    Parsed::Request(q, token)
}

fn reply_rejected(topic: &str, token: Option<Value>, r: Rejected) -> (String, Value) {
    let mut body = json!({"code": r.code, "message": r.message, "timestamp": now_secs()});
    if let Some(t) = token {
        body["clientToken"] = t;
    }
    if let Some(e) = &r.state {
        body["executionState"] = execution_state(e);
    }
    (format!("{topic}/rejected"), body)
}
