//! How the operator commands talk to a person: the [`Ui`] trait (print a line, read an answer),
//! the terminal implementation [`StdUi`], the table printer, and [`confirm_and_apply`], the one
//! plan → print → dry run → ask → apply skeleton that split, merge, reset, restore and
//! add-partitions share.
//!
//! The Python front implements [`Ui`] too (`src/python/ops.rs`), so a Django command prints
//! through its own `self.stdout` and asks through its own input function.

use std::fmt::Write as _;
use std::future::Future;
use std::io::{BufRead, Write};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::conn::Confirm;
use crate::store::liveness::ProcessRow;

/// Where a command's lines go and where its answers come from.
pub trait Ui {
    /// A line of standard output: the plan, tables, JSON.
    fn out(&self, line: &str);
    /// A line of standard error: messages and questions while standard output carries JSON.
    fn err(&self, line: &str);
    /// Reads one answer, trimmed; `""` at the end of input.
    fn read_answer(&self) -> String;
}

/// The terminal: the process's stdout, stderr and stdin.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdUi;

// The operator's terminal is the one place the CLI prints.
#[allow(clippy::print_stdout, clippy::print_stderr)]
impl Ui for StdUi {
    fn out(&self, line: &str) {
        println!("{line}");
    }

    fn err(&self, line: &str) {
        eprintln!("{line}");
    }

    fn read_answer(&self) -> String {
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        line.trim().to_owned()
    }
}

/// Messages go to standard output, or to standard error when standard output carries JSON.
#[derive(Clone, Copy)]
pub struct Say<'a> {
    pub ui: &'a dyn Ui,
    pub json: bool,
}

impl<'a> Say<'a> {
    pub fn new(ui: &'a dyn Ui, json: bool) -> Self {
        Self { ui, json }
    }

    /// A message line.
    pub fn say(&self, msg: &str) {
        if self.json {
            self.ui.err(msg);
        } else {
            self.ui.out(msg);
        }
    }

    /// Shows `question` like a message and returns the trimmed answer.
    pub fn ask(&self, question: &str) -> String {
        self.say(question);
        self.ui.read_answer()
    }
}

/// Prints aligned columns, two spaces apart, with a header line.
pub fn print_table(ui: &dyn Ui, headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$}  ", w = widths[i]);
            }
        }
        ui.out(s.trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r);
    }
}

/// A time as the commands print it.
pub fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// Python's list repr, as CommCare prints ids: `['a', 'b']`.
pub fn py_list(ids: &[String]) -> String {
    format!(
        "[{}]",
        ids.iter()
            .map(|i| format!("'{i}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Which answers a question accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// Exactly `y`.
    Y,
    /// Exactly `yes`.
    Yes,
    /// `y` or `yes`, any case.
    YOrYes,
}

impl Accept {
    fn accepts(self, answer: &str) -> bool {
        match self {
            Self::Y => answer == "y",
            Self::Yes => answer == "yes",
            Self::YOrYes => matches!(answer.to_lowercase().as_str(), "y" | "yes"),
        }
    }
}

/// One step between the plan and the apply.
#[derive(Debug, Clone)]
pub enum Step {
    /// A message said in every case (also with `--noinput`).
    Note(String),
    /// A message said only when questions are asked (not with `--noinput`).
    Prompt(String),
    /// A question (skipped with `--noinput`): a refused answer says `declined_message`, if any,
    /// and ends the command with `status`.
    Ask {
        question: String,
        accept: Accept,
        status: u8,
        declined_message: Option<String>,
    },
}

impl Step {
    /// A question that exits with [`super::DECLINED`] when refused.
    pub fn ask(question: impl Into<String>, accept: Accept) -> Self {
        Self::Ask {
            question: question.into(),
            accept,
            status: super::DECLINED,
            declined_message: None,
        }
    }
}

/// CommCare's "already exists" block and its two questions.
pub fn overwrite_steps(header: String, existing: &[crate::ops::Row]) -> Vec<Step> {
    let mut steps = vec![Step::Prompt(header)];
    for (id, t) in crate::ops::last_modified_by_id(existing) {
        steps.push(Step::Prompt(format!("  {id}: last modified {}", time(&t))));
    }
    steps.push(Step::ask(
        "Do you want to continue and overwrite existing checkpoints? [y/n]",
        Accept::Y,
    ));
    steps.push(Step::ask(
        "Are you sure you want to DELETE existing checkpoints? [y/n]",
        Accept::Y,
    ));
    steps
}

/// What a changing command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The plan was written; `T` says what was written.
    Applied(T),
    /// `--dry-run`: the plan was shown and nothing was written.
    DryRun,
    /// The plan changes nothing.
    NothingToDo,
    /// A question was refused: nothing was written; `status` is the exit status.
    Declined { status: u8, question: String },
}

impl<T> Outcome<T> {
    /// The command's exit status.
    pub fn status(&self) -> u8 {
        match self {
            Self::Applied(_) | Self::DryRun | Self::NothingToDo => 0,
            Self::Declined { status, .. } => *status,
        }
    }
}

/// A plan and what became of it (the Python front returns both).
#[derive(Debug, Clone)]
pub struct Report<T> {
    /// The plan, as `--json` prints it.
    pub plan: serde_json::Value,
    pub outcome: Outcome<T>,
}

/// What [`confirm_and_apply`] shows and asks.
pub struct Confirmation<'a, P: ?Sized> {
    /// The plan (printed as JSON with `--json`).
    pub plan: &'a P,
    /// The live processes that `--force` overrode (a warning each).
    pub forced: &'a [ProcessRow],
    /// Prints the plan as text (without `--json`).
    pub text: &'a dyn Fn(&dyn Ui, &P),
    /// Warnings said after the plan, before the dry-run check.
    pub notes: Vec<String>,
    /// `Some(message)` when the plan changes nothing: the message is said and nothing is asked.
    pub nothing_to_do: Option<&'a str>,
    /// The messages and questions between the plan and the apply.
    pub steps: Vec<Step>,
}

/// The skeleton of every changing command: warn about forced live processes, print the plan
/// (text or JSON), say the notes, stop for `--dry-run` or an empty plan, say and ask the steps
/// (questions skipped with `--noinput`), then `apply`.
pub async fn confirm_and_apply<P, T, F, Fut>(
    ui: &dyn Ui,
    c: &Confirm,
    conf: Confirmation<'_, P>,
    apply: F,
) -> anyhow::Result<Report<T>>
where
    P: Serialize + ?Sized,
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let say = Say::new(ui, c.json);
    // A dry run changes nothing, so it is allowed while a pillow runs (the callers plan with
    // `force || dry_run`); it says that applying would be refused.
    for p in conf.forced {
        if c.dry_run && !c.force {
            say.say(&format!(
                "note: pillow {} (checkpoint {}) has a live process {} on {} pid {}: applying this would be refused (stop it first, or --force)",
                p.pillow_name, p.checkpoint_id, p.process_num, p.hostname, p.pid
            ));
        } else {
            say.say(&format!(
                "warning: pillow {} (checkpoint {}) has a live process {} on {} pid {}: proceeding because of --force",
                p.pillow_name, p.checkpoint_id, p.process_num, p.hostname, p.pid
            ));
        }
    }
    let plan = serde_json::to_value(conf.plan)?;
    if c.json {
        ui.out(&serde_json::to_string_pretty(&plan)?);
    } else {
        (conf.text)(ui, conf.plan);
    }
    for n in &conf.notes {
        say.say(n);
    }
    let report = |outcome| {
        Ok(Report {
            plan: plan.clone(),
            outcome,
        })
    };
    if c.dry_run {
        say.say("dry run: nothing was written");
        return report(Outcome::DryRun);
    }
    if let Some(msg) = conf.nothing_to_do {
        say.say(msg);
        return report(Outcome::NothingToDo);
    }
    for step in conf.steps {
        match step {
            Step::Note(msg) => say.say(&msg),
            Step::Prompt(msg) if !c.noinput => say.say(&msg),
            Step::Ask {
                question,
                accept,
                status,
                declined_message,
            } if !c.noinput => {
                if !accept.accepts(&say.ask(&question)) {
                    if let Some(msg) = declined_message {
                        say.say(&msg);
                    }
                    return report(Outcome::Declined { status, question });
                }
            }
            // --noinput: prompts are not said and questions are not asked.
            Step::Prompt(_) | Step::Ask { .. } => {}
        }
    }
    let done = apply().await?;
    Ok(Report {
        plan,
        outcome: Outcome::Applied(done),
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use super::*;

    /// Records every line and answers from a script.
    #[derive(Default)]
    struct Script {
        lines: RefCell<Vec<String>>,
        answers: RefCell<VecDeque<&'static str>>,
    }

    impl Ui for Script {
        fn out(&self, line: &str) {
            self.lines.borrow_mut().push(line.to_owned());
        }
        fn err(&self, line: &str) {
            self.lines.borrow_mut().push(format!("err: {line}"));
        }
        fn read_answer(&self) -> String {
            self.answers
                .borrow_mut()
                .pop_front()
                .unwrap_or("")
                .to_owned()
        }
    }

    fn confirm(noinput: bool, dry_run: bool, json: bool) -> Confirm {
        Confirm {
            noinput,
            dry_run,
            force: false,
            json,
        }
    }

    fn steps() -> Vec<Step> {
        vec![
            Step::Prompt("header".into()),
            Step::ask("first? [y/n]", Accept::Y),
            Step::Note("note".into()),
            Step::Ask {
                question: "second? y/N".into(),
                accept: Accept::Yes,
                status: 3,
                declined_message: Some("aborted".into()),
            },
        ]
    }

    async fn go(ui: &Script, c: &Confirm) -> (Outcome<u32>, bool) {
        let applied = std::cell::Cell::new(false);
        let text = |ui: &dyn Ui, p: &Vec<u32>| ui.out(&format!("plan {p:?}"));
        let r = confirm_and_apply(
            ui,
            c,
            Confirmation {
                plan: &vec![1u32, 2],
                forced: &[],
                text: &text,
                notes: vec!["warning".into()],
                nothing_to_do: None,
                steps: steps(),
            },
            || async {
                applied.set(true);
                Ok(7)
            },
        )
        .await
        .expect("no error");
        (r.outcome, applied.get())
    }

    #[tokio::test]
    async fn every_question_answered_applies_the_plan() {
        let ui = Script::default();
        ui.answers.borrow_mut().extend(["y", "yes"]);
        let (outcome, applied) = go(&ui, &confirm(false, false, false)).await;
        assert_eq!(outcome, Outcome::Applied(7));
        assert!(applied);
        assert_eq!(
            *ui.lines.borrow(),
            [
                "plan [1, 2]",
                "warning",
                "header",
                "first? [y/n]",
                "note",
                "second? y/N"
            ]
        );
    }

    #[tokio::test]
    async fn a_refused_question_writes_nothing_and_carries_its_status() {
        let ui = Script::default();
        ui.answers.borrow_mut().extend(["y", "y"]);
        let (outcome, applied) = go(&ui, &confirm(false, false, false)).await;
        assert_eq!(outcome.status(), 3);
        assert!(!applied);
        assert_eq!(
            ui.lines.borrow().last().map(String::as_str),
            Some("aborted")
        );
    }

    #[tokio::test]
    async fn noinput_skips_prompts_and_questions_but_not_notes() {
        let ui = Script::default();
        let (outcome, applied) = go(&ui, &confirm(true, false, false)).await;
        assert_eq!(outcome, Outcome::Applied(7));
        assert!(applied);
        assert_eq!(*ui.lines.borrow(), ["plan [1, 2]", "warning", "note"]);
    }

    #[tokio::test]
    async fn dry_run_with_json_prints_the_plan_on_stdout_and_messages_on_stderr() {
        let ui = Script::default();
        let (outcome, applied) = go(&ui, &confirm(false, true, true)).await;
        assert_eq!(outcome, Outcome::DryRun);
        assert!(!applied);
        assert_eq!(
            *ui.lines.borrow(),
            [
                "[\n  1,\n  2\n]",
                "err: warning",
                "err: dry run: nothing was written"
            ]
        );
    }
}
