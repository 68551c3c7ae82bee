//! Assembly of a [`History`] from events in the order they happened, shared by the parsers
//! and [`super::HistoryRecorder`].

use std::collections::HashMap;

use super::{Call, History, MissingKeyRead, Operation, Outcome, Output};

/// Operations built so far and the open operation of each process.
#[derive(Debug, Default)]
pub(super) struct Builder {
    operations: Vec<Operation>,
    /// Index into `operations` of each process's operation that has no completion event yet.
    open: HashMap<u64, usize>,
    next_position: usize,
}

impl Builder {
    /// Adds the invoke event of `call` by `process` and returns the operation's index.
    pub(super) fn invoke(
        &mut self,
        process: u64,
        call: Call,
        line: Option<usize>,
    ) -> Result<usize, String> {
        if let Some(&open) = self.open.get(&process) {
            return Err(format!(
                "process {process} invokes {} while its earlier {} is still open; complete \
                 that operation first or give the new one another process id",
                call.name(),
                describe_invocation(&self.operations[open]),
            ));
        }
        let index = self.operations.len();
        self.operations.push(Operation {
            process,
            call,
            outcome: Outcome::Pending,
            invoke_position: self.next_position,
            completion_position: None,
            invoke_line: line,
            completion_line: None,
        });
        self.next_position += 1;
        self.open.insert(process, index);
        Ok(index)
    }

    /// Returns the open operation of `process`, if any.
    pub(super) fn open_operation(&self, process: u64) -> Option<&Operation> {
        self.open
            .get(&process)
            .map(|&index| &self.operations[index])
    }

    /// Adds the completion event of the open operation of `process`.
    pub(super) fn complete_process(
        &mut self,
        process: u64,
        outcome: Outcome,
        line: Option<usize>,
    ) -> Result<(), String> {
        match self.open.get(&process) {
            Some(&index) => self.complete(index, outcome, line),
            None => Err(format!(
                "process {process} completes an operation but has none open; every \
                 completion must follow an invoke event of the same process"
            )),
        }
    }

    /// Adds the completion event of the operation at `index`.
    pub(super) fn complete(
        &mut self,
        index: usize,
        outcome: Outcome,
        line: Option<usize>,
    ) -> Result<(), String> {
        let Some(operation) = self.operations.get_mut(index) else {
            return Err(format!(
                "operation index {index} is out of range for a history of {} operations",
                self.operations.len()
            ));
        };
        if operation.completion_position.is_some() {
            return Err(format!(
                "{} is already completed",
                describe_invocation(operation)
            ));
        }
        let outcome = normalize_outcome(&operation.call, outcome)?;
        operation.outcome = outcome;
        operation.completion_position = Some(self.next_position);
        operation.completion_line = line;
        self.next_position += 1;
        self.open.remove(&operation.process);
        Ok(())
    }

    /// Returns a copy of the history built so far.
    pub(super) fn snapshot(&self, missing_key_read: MissingKeyRead) -> History {
        History {
            operations: self.operations.clone(),
            missing_key_read,
        }
    }

    /// Returns the history built so far.
    pub(super) fn finish(self, missing_key_read: MissingKeyRead) -> History {
        History {
            operations: self.operations,
            missing_key_read,
        }
    }
}

/// Checks that `outcome` fits `call` and stores a failed compare-and-set as
/// `Ok(Output::Cas(false))`.
fn normalize_outcome(call: &Call, outcome: Outcome) -> Result<Outcome, String> {
    let fits = match (&outcome, call) {
        (Outcome::Ok(Output::Read(_)), Call::Read { .. }) => true,
        (Outcome::Ok(Output::Cas(_)), Call::Cas { .. }) => true,
        (Outcome::Fail, Call::Cas { .. }) => return Ok(Outcome::Ok(Output::Cas(false))),
        (
            Outcome::Ok(Output::Done),
            Call::Write { .. } | Call::Append { .. } | Call::Delete { .. },
        ) => true,
        (Outcome::Ok(_), _) => false,
        (Outcome::Fail | Outcome::Info, _) => true,
        (Outcome::Pending, _) => {
            return Err("a completion cannot have the outcome Pending".to_string());
        }
    };
    if fits {
        Ok(outcome)
    } else {
        Err(format!(
            "output {outcome:?} does not fit {call}; use Output::Read for a read, Output::Cas \
             for a cas and Output::Done otherwise"
        ))
    }
}

/// Describes an operation by its call and where it was invoked, for error messages.
fn describe_invocation(operation: &Operation) -> String {
    match operation.invoke_line {
        Some(line) => format!("{} invoked on line {line}", operation.call),
        None => format!(
            "{} invoked at event {}",
            operation.call, operation.invoke_position
        ),
    }
}
