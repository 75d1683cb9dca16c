//! `pillowtop`: the operator command line. Every command is `pillowtop::cli` (shared with the
//! Python front); this binary adds only the README's `demo` (see `demo.rs`).

mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pillowtop::cli::{self, ui::StdUi};

#[derive(Parser)]
#[command(
    name = "pillowtop",
    version,
    about = "Operate CommCare-compatible pillows: Kafka change feeds with PostgreSQL checkpoints",
    after_help = cli::EXIT_STATUS_HELP
)]
struct Top {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Demo, the README's main job: publish CommCare-style form changes (with their documents)
    /// to a new topic, run an xform pillow into an Elasticsearch index and a PostgreSQL reporting
    /// table with a live progress line, print the lag table and a query of each store, then
    /// split the checkpoint so that each processor runs on in its own pillow.
    // Listed second in --help, after `schema`, as before the CLI moved into the library.
    #[command(display_order = 2)]
    Demo(demo::DemoArgs),
    #[command(flatten)]
    Cli(cli::Command),
}

fn main() -> ExitCode {
    let code = match Top::try_parse() {
        Err(e) => cli::usage_error(&e),
        Ok(Top {
            command: Command::Demo(args),
        }) => {
            demo::init_logging();
            cli::block_on(&StdUi, async { demo::demo(args).await.map(|()| 0) })
        }
        Ok(Top {
            command: Command::Cli(command),
        }) => cli::block_on(&StdUi, command.exec(&StdUi)),
    };
    ExitCode::from(code)
}
