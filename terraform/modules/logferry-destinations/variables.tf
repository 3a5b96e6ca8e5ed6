variable "name_prefix" {
  description = "Prefix of every resource name (queue, function, roles, stream, Glue database)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.name_prefix))
    error_message = "name_prefix must be 2-31 lower-case letters, digits or hyphens, starting with a letter."
  }
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

# -- S3 --------------------------------------------------------------------------------------

variable "create_bucket" {
  description = "Create the log bucket (encryption, public access block, ownership, TLS-only policy, lifecycle). False: use the existing bucket bucket_name as is (the indexer's notification then replaces that bucket's notification configuration)."
  type        = bool
  default     = true
}

variable "bucket_name" {
  description = "Name of the log bucket (created, or existing with create_bucket = false)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name."
  }
}

variable "force_destroy" {
  description = "Let terraform destroy delete a bucket that still holds logs."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "KMS key for the bucket's default encryption (SSE-KMS); empty: SSE-S3 (AES256). The indexer gets kms:Decrypt/GenerateDataKey on it."
  type        = string
  default     = ""

  validation {
    condition     = var.kms_key_arn == "" || can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be empty or a KMS key ARN."
  }
}

variable "logs_prefix" {
  description = "Key prefix the routers write under (the static part of the s3 sink's key_prefix); the indexer is notified for objects under it and the Glue logs table reads it."
  type        = string
  default     = "logs/"

  validation {
    condition     = can(regex("^[A-Za-z0-9!_.*'()/-]+/$", var.logs_prefix)) && !startswith(var.logs_prefix, "/")
    error_message = "logs_prefix must be a relative key prefix ending with /."
  }
}

variable "transition_days" {
  description = "Days after which log objects move to transition_storage_class (0: never)."
  type        = number
  default     = 30

  validation {
    condition     = var.transition_days >= 0
    error_message = "transition_days must be >= 0."
  }
}

variable "transition_storage_class" {
  description = "Storage class of the lifecycle transition."
  type        = string
  default     = "STANDARD_IA"

  validation {
    condition     = contains(["STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE"], var.transition_storage_class)
    error_message = "transition_storage_class must be an S3 storage class for lifecycle transitions."
  }
}

variable "expiration_days" {
  description = "Days after which log objects (and index documents) are deleted (0: never)."
  type        = number
  default     = 365

  validation {
    condition     = var.expiration_days >= 0
    error_message = "expiration_days must be >= 0."
  }
}

# -- CloudWatch Logs -------------------------------------------------------------------------

variable "create_log_group" {
  description = "Create a CloudWatch log group for the routers' cloudwatch_logs sink."
  type        = bool
  default     = true
}

variable "log_group_name" {
  description = "Name of that log group (default /logferry/<name_prefix>)."
  type        = string
  default     = ""
}

variable "log_group_retention_days" {
  description = "Retention of the log group (and of the indexer's own log group)."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_group_retention_days)
    error_message = "log_group_retention_days must be a retention CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, ... 3653)."
  }
}

variable "log_group_kms_key_arn" {
  description = "KMS key for the log group (its key policy must allow logs.<region>.amazonaws.com); empty: CloudWatch's own encryption."
  type        = string
  default     = ""
}

# -- Firehose --------------------------------------------------------------------------------

variable "create_firehose" {
  description = "Create a Firehose delivery stream (Direct PUT) into the bucket, for the routers' firehose sink."
  type        = bool
  default     = false
}

variable "firehose_prefix" {
  description = "Key prefix of what Firehose delivers."
  type        = string
  default     = "firehose/!{timestamp:yyyy/MM/dd/HH}/"
}

variable "firehose_error_prefix" {
  description = "Key prefix of records Firehose could not deliver."
  type        = string
  default     = "firehose-errors/!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd}/"
}

variable "firehose_buffering_size" {
  description = "Firehose buffer size in MiB."
  type        = number
  default     = 64

  validation {
    condition     = var.firehose_buffering_size >= 1 && var.firehose_buffering_size <= 128
    error_message = "firehose_buffering_size must be 1-128 MiB."
  }
}

variable "firehose_buffering_interval" {
  description = "Firehose buffer interval in seconds."
  type        = number
  default     = 300

  validation {
    condition     = var.firehose_buffering_interval >= 0 && var.firehose_buffering_interval <= 900
    error_message = "firehose_buffering_interval must be 0-900 seconds."
  }
}

variable "firehose_compression" {
  description = "Compression of what Firehose writes."
  type        = string
  default     = "GZIP"

  validation {
    condition     = contains(["UNCOMPRESSED", "GZIP", "ZIP", "Snappy", "HADOOP_SNAPPY"], var.firehose_compression)
    error_message = "firehose_compression must be UNCOMPRESSED, GZIP, ZIP, Snappy or HADOOP_SNAPPY."
  }
}

# -- the indexer Lambda ----------------------------------------------------------------------

variable "indexer_zip_path" {
  description = "Path of the indexer's bootstrap.zip (lambda/build.sh writes target/lambda/bootstrap/bootstrap.zip). Empty: no indexer, no queue, no notification."
  type        = string
  default     = ""
}

variable "index_prefix" {
  description = "Where the indexer writes index documents (INDEX_PREFIX)."
  type        = string
  default     = "_index/"

  validation {
    condition     = endswith(var.index_prefix, "/") && !startswith(var.index_prefix, "/")
    error_message = "index_prefix must be a relative prefix ending with /."
  }
}

variable "quarantine_prefix" {
  description = "Where the indexer copies objects it cannot read (QUARANTINE_PREFIX)."
  type        = string
  default     = "_quarantine/"

  validation {
    condition     = endswith(var.quarantine_prefix, "/") && !startswith(var.quarantine_prefix, "/")
    error_message = "quarantine_prefix must be a relative prefix ending with /."
  }
}

variable "indexer_environment" {
  description = "Further indexer settings: MAX_DECOMPRESSED_BYTES, MAX_BAD_LINE_RATIO, DISTINCT_FIELDS, DISTINCT_CAP, TOKEN_FIELDS, BLOOM_FP_RATE; and the compactor's COMPACT_ROW_GROUP_BYTES, COMPACT_FILE_INPUT_BYTES."
  type        = map(string)
  default = {
    DISTINCT_FIELDS = "ecs_cluster,ecs_task_id,container_name,kubernetes.pod_name,level"
    TOKEN_FIELDS    = "msg,log,message"
  }

  validation {
    condition = alltrue([for k in keys(var.indexer_environment) : contains(
      ["MAX_DECOMPRESSED_BYTES", "MAX_BAD_LINE_RATIO", "DISTINCT_FIELDS", "DISTINCT_CAP", "TOKEN_FIELDS", "BLOOM_FP_RATE",
      "COMPACT_ROW_GROUP_BYTES", "COMPACT_FILE_INPUT_BYTES"], k
    )])
    error_message = "indexer_environment takes only MAX_DECOMPRESSED_BYTES, MAX_BAD_LINE_RATIO, DISTINCT_FIELDS, DISTINCT_CAP, TOKEN_FIELDS, BLOOM_FP_RATE, COMPACT_ROW_GROUP_BYTES, COMPACT_FILE_INPUT_BYTES (the prefixes and the other COMPACT_* settings have their own variables)."
  }
}

variable "indexer_memory_size" {
  description = "Indexer memory (MiB)."
  type        = number
  default     = 512

  validation {
    condition     = var.indexer_memory_size >= 128 && var.indexer_memory_size <= 10240
    error_message = "indexer_memory_size must be 128-10240 MiB."
  }
}

variable "indexer_timeout" {
  description = "Indexer timeout (seconds); the queue's visibility timeout is six times this."
  type        = number
  default     = 120

  validation {
    condition     = var.indexer_timeout >= 10 && var.indexer_timeout <= 900
    error_message = "indexer_timeout must be 10-900 seconds."
  }
}

variable "indexer_reserved_concurrency" {
  description = "Reserved concurrency of the indexer (bounds S3 reads and cost)."
  type        = number
  default     = 10

  validation {
    condition     = var.indexer_reserved_concurrency >= 1
    error_message = "indexer_reserved_concurrency must be >= 1."
  }
}

variable "indexer_max_receive_count" {
  description = "Receives before a notification moves to the dead-letter queue."
  type        = number
  default     = 5

  validation {
    condition     = var.indexer_max_receive_count >= 1 && var.indexer_max_receive_count <= 1000
    error_message = "indexer_max_receive_count must be 1-1000."
  }
}

# -- the Parquet compactor (same function as the indexer) -----------------------------------

variable "compactor_enabled" {
  description = "Run the compactor in the indexer function (needs indexer_zip_path): an hourly EventBridge schedule, COMPACT_* settings, its IAM statements and, with create_glue_tables, the logs_parquet table and Athena named queries."
  type        = bool
  default     = false
}

variable "compact_prefix" {
  description = "Where the compactor writes Parquet files and manifests (COMPACT_PREFIX): <compact_prefix>dt=YYYY-MM-DD/hour=HH/source=<name>/. Must not lie under logs_prefix, index_prefix or quarantine_prefix."
  type        = string
  default     = "compacted/"

  validation {
    condition     = can(regex("^[A-Za-z0-9!_.*'()/-]+/$", var.compact_prefix)) && !startswith(var.compact_prefix, "/")
    error_message = "compact_prefix must be a relative key prefix ending with /."
  }
}

variable "compact_sources" {
  description = "What the schedule compacts (COMPACT_SOURCES): source name -> key template in strftime form under logs_prefix, e.g. { app = \"logs/app/%Y/%m/%d/%H/\" }; with the index, the layout root (\"logs/\") is enough. The names are the logs_parquet table's source partition. Required when compactor_enabled."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.compact_sources : can(regex("^[A-Za-z0-9._-]+$", k)) && can(regex("^[^,=/][^,=]*/$", v))])
    error_message = "compact_sources: names are letters, digits, . _ -; templates are relative key prefixes ending with / and hold no , or =."
  }
}

variable "compact_inputs" {
  description = "What happens to compacted inputs once their manifest exists (COMPACT_INPUTS): tag (logferry-compacted=true), delete, or keep. Only delete gives the function s3:DeleteObject under the sources' prefixes."
  type        = string
  default     = "tag"

  validation {
    condition     = contains(["tag", "delete", "keep"], var.compact_inputs)
    error_message = "compact_inputs must be tag, delete or keep."
  }
}

variable "compact_columns" {
  description = "Columns of the application's own top-level fields in the Parquet (COMPACT_COLUMNS): name -> string, bigint, double or boolean, e.g. { request_id = \"string\", latency_ms = \"double\" }. A field takes its column only when its value has exactly that type; other values stay in the rest column. Names are lower case [a-z_][a-z0-9_]*, at most 64 characters and 32 columns, and not a column of the layout. The columns are added to logs_parquet with their types and to the NDJSON logs table as string (its JSON SerDe fails a query on a value of another type). Change them only between hours: a re-run of an hour with other columns writes other files."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for name in keys(var.compact_columns) : can(regex("^[a-z_][a-z0-9_]{0,63}$", name))])
    error_message = "compact_columns: names are lower-case letters, digits and _, not starting with a digit, at most 64 characters (Athena folds names to lower case)."
  }
  validation {
    condition     = alltrue([for ty in values(var.compact_columns) : contains(["string", "bigint", "double", "boolean"], ty)])
    error_message = "compact_columns: types are string, bigint, double or boolean."
  }
  validation {
    # The layout's own columns (lambda/src/compacted.rs) and the partitions dt, hour, source.
    condition = length(setintersection(keys(var.compact_columns), [
      "timestamp", "level", "log", "message", "msg", "ecs_cluster", "ecs_task_arn", "ecs_task_id",
      "ecs_task_definition", "container_name", "container_id", "aws_region", "availability_zone",
      "launch_type", "ec2_instance_id", "ec2_instance_type", "az", "private_ip", "ami_id", "account_id",
      "hostname", "kubernetes", "rest", "dt", "hour", "source",
    ])) == 0
    error_message = "compact_columns: a name is already a column of the compacted layout (timestamp, level, log, message, msg, the ECS and EC2 fields, kubernetes, rest) or a partition (dt, hour, source)."
  }
  validation {
    condition     = length(var.compact_columns) <= 32
    error_message = "compact_columns: at most 32 columns."
  }
}

variable "compact_schedule" {
  description = "EventBridge schedule of the compactor: each run compacts, for every source, the last hour that ended at least compact_delay before it."
  type        = string
  default     = "cron(15 * * * ? *)"

  validation {
    condition     = can(regex("^(cron|rate)\\(.+\\)$", var.compact_schedule))
    error_message = "compact_schedule must be a cron(...) or rate(...) expression."
  }
}

variable "compact_delay" {
  description = "How long after an hour ends the schedule waits for late objects (COMPACT_DELAY, e.g. 10m); keep it below the schedule's offset into the hour."
  type        = string
  default     = "10m"

  validation {
    condition     = can(regex("^[0-9]+(s|m|h)$", var.compact_delay))
    error_message = "compact_delay must be a duration like 600s, 10m or 1h."
  }
}

variable "compactor_timeout" {
  description = "Timeout (seconds) the compactor needs. The function is shared: with the compactor on, its timeout is max(indexer_timeout, compactor_timeout) and the queue's visibility timeout six times that."
  type        = number
  default     = 900

  validation {
    condition     = var.compactor_timeout >= 60 && var.compactor_timeout <= 900
    error_message = "compactor_timeout must be 60-900 seconds."
  }
}

variable "compactor_memory_size" {
  description = "Memory (MiB) the compactor needs (it stays under 512 MiB; Lambda CPU grows with memory). With the compactor on, the shared function gets max(indexer_memory_size, compactor_memory_size)."
  type        = number
  default     = 1024

  validation {
    condition     = var.compactor_memory_size >= 512 && var.compactor_memory_size <= 10240
    error_message = "compactor_memory_size must be 512-10240 MiB."
  }
}

variable "compacted_input_expiration_days" {
  description = "Days after which inputs the compactor tagged logferry-compacted=true expire (0: never; with compact_inputs = \"tag\")."
  type        = number
  default     = 0

  validation {
    condition     = var.compacted_input_expiration_days >= 0
    error_message = "compacted_input_expiration_days must be >= 0."
  }
}

variable "athena_workgroup" {
  description = "Athena workgroup of the named queries."
  type        = string
  default     = "primary"
}

# -- Glue / Athena ---------------------------------------------------------------------------

variable "create_glue_tables" {
  description = "Create a Glue database with two tables using partition projection (no crawler): `logs` over the delivered NDJSON, `log_index` over the index documents."
  type        = bool
  default     = false
}

variable "glue_cluster_names" {
  description = "Values of the first partition of the logs table: the ECS cluster names (or Kubernetes namespaces) in the s3 sink's key_prefix <logs_prefix>{ecs_cluster}/%Y/%m/%d/%H/."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.glue_cluster_names : can(regex("^[A-Za-z0-9._=:@+-]+$", c))])
    error_message = "glue_cluster_names must hold key-safe names (the router writes other characters as _)."
  }
}

variable "glue_projection_start" {
  description = "First hour the logs table's date projection covers (yyyy/MM/dd/HH); the index table starts on the same day."
  type        = string
  default     = "2026/01/01/00"

  validation {
    condition     = can(regex("^[0-9]{4}/[0-9]{2}/[0-9]{2}/[0-9]{2}$", var.glue_projection_start))
    error_message = "glue_projection_start must be yyyy/MM/dd/HH."
  }
}
