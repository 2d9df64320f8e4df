//! `ferroformer chat`: an interactive conversation in the terminal. Each turn renders the
//! whole history with the model's chat template and streams the reply until the template's
//! end-of-turn token. Commands: `/reset` forgets the history, `/exit` (or end of input) quits.

use super::generate::SamplingArgs;
use super::{print_flush, Common, ModelArgs};
use anyhow::Result;
use clap::Args;
use ferroformer::infer::generate::generate_stream;
use ferroformer::text::chat::Message;
use std::io::{BufRead, Write};

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message for the whole conversation [default: the template's own, if any].
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn run(a: ChatArgs, c: &Common) -> Result<()> {
    let cfg = a.sampling.config(c)?;
    let p = a.model.load(c)?;
    let template = p.chat()?;
    let stop = p.stop_tokens();
    let mut history: Vec<Message> = vec![];
    if let Some(s) = &a.system {
        history.push(Message::new("system", s));
    }
    let interactive = !c.quiet;
    if interactive {
        eprintln!("chat: type a message; /reset clears the history, /adapter NAME[,NAME] (or /adapter none) switches the --adapter applied, /exit quits");
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut turn = 0u64;
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let msg = line.trim();
        match msg {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history.truncate(usize::from(a.system.is_some()));
                if interactive {
                    eprintln!("(history cleared)");
                }
                continue;
            }
            _ => {}
        }
        if let Some(names) = msg.strip_prefix("/adapter") {
            // Switching needs no reload: every adapted layer reads the same switch.
            let names: Vec<&str> = names
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty() && *n != "none")
                .collect();
            match p.store.peft().set_active(&names) {
                Ok(()) if interactive => eprintln!("(adapters: {names:?})"),
                Ok(()) => {}
                Err(e) => eprintln!("{e}"),
            }
            continue;
        }
        history.push(Message::new("user", msg));
        let text = template.render(&history, true)?;
        let ids = p.tokenizer.encode(&text)?;
        // A different seed per turn, still fixed by --seed.
        let turn_cfg = ferroformer::infer::generate::SamplingConfig {
            seed: cfg.seed.wrapping_add(turn),
            ..cfg
        };
        turn += 1;
        let mut reply = String::new();
        let out = generate_stream(&p.model, &p.tokenizer, &ids, &turn_cfg, &stop, &mut |t| {
            reply.push_str(t);
            print_flush(t);
        })?;
        println!();
        if out.len() == cfg.max_tokens && interactive {
            eprintln!("(reply cut at --max-tokens {})", cfg.max_tokens);
        }
        history.push(Message::new("assistant", reply.trim_end()));
    }
    Ok(())
}
