//! The admin CLI's operations (the `tollgate` binary parses arguments and calls these).
