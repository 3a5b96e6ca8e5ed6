data "aws_partition" "current" {}
data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

locals {
  partition      = data.aws_partition.current.partition
  account        = data.aws_caller_identity.current.account_id
  region         = data.aws_region.current.name
  log_group_name = var.log_group_name != "" ? var.log_group_name : "/logferry/${var.name_prefix}"
  indexer        = var.indexer_zip_path != ""
  indexer_name   = "${var.name_prefix}-indexer"
  # The bucket this module made, or the existing one named by bucket_name.
  bucket_id  = var.create_bucket ? aws_s3_bucket.logs[0].id : var.bucket_name
  bucket_arn = "arn:${local.partition}:s3:::${local.bucket_id}"
  # The compactor runs in the indexer's function, so it needs the indexer.
  compactor = local.indexer && var.compactor_enabled
  # Static part of each source's template (up to its first strftime field): what the
  # compactor lists, reads, tags or deletes under.
  compact_source_prefixes = distinct([for t in values(var.compact_sources) : regex("^[^%]*", t)])
  compact_quarantine      = "${var.quarantine_prefix}compact/"
  # The function is shared: it gets what the larger of its two jobs needs.
  function_timeout = local.compactor ? max(var.indexer_timeout, var.compactor_timeout) : var.indexer_timeout
  function_memory  = local.compactor ? max(var.indexer_memory_size, var.compactor_memory_size) : var.indexer_memory_size
  compact_environment = local.compactor ? merge({
    COMPACT_PREFIX  = var.compact_prefix
    COMPACT_INPUTS  = var.compact_inputs
    COMPACT_BUCKET  = local.bucket_id
    COMPACT_SOURCES = join(",", [for name, tpl in var.compact_sources : "${name}=${tpl}"])
    COMPACT_DELAY   = var.compact_delay
    # A map iterates in name order, the order the function sorts the columns in too.
  }, length(var.compact_columns) > 0 ? { COMPACT_COLUMNS = join(",", [for name, ty in var.compact_columns : "${name}:${ty}"]) } : {}) : {}
}

# -- S3 --------------------------------------------------------------------------------------

resource "aws_s3_bucket" "logs" {
  # checkov:skip=CKV_AWS_18:Access logging would need a second bucket; enable it with your organisation's access-log bucket.
  # checkov:skip=CKV_AWS_21:Objects are write-once (unique UUIDv7 names, never overwritten); versioning would only add cost.
  # checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice left to the user.
  # checkov:skip=CKV_AWS_145:SSE-KMS is available through kms_key_arn; the default is SSE-S3 so routers need no KMS permission.
  # checkov:skip=CKV_AWS_19:Encrypted by aws_s3_bucket_server_side_encryption_configuration.logs (SSE-S3, or SSE-KMS with kms_key_arn); checkov cannot evaluate its conditional.
  # checkov:skip=CKV2_AWS_62:Event notifications are configured (to SQS) when the indexer is enabled.
  count         = var.create_bucket ? 1 : 0
  bucket        = var.bucket_name
  force_destroy = var.force_destroy
  tags          = var.tags
}

resource "aws_s3_bucket_ownership_controls" "logs" {
  count  = var.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.logs[0].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "logs" {
  count                   = var.create_bucket ? 1 : 0
  bucket                  = aws_s3_bucket.logs[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "logs" {
  count  = var.create_bucket ? 1 : 0
  bucket = aws_s3_bucket.logs[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == "" ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn == "" ? null : var.kms_key_arn
    }
    bucket_key_enabled = var.kms_key_arn != ""
  }
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [local.bucket_arn, "${local.bucket_arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "logs" {
  count      = var.create_bucket ? 1 : 0
  bucket     = aws_s3_bucket.logs[0].id
  policy     = data.aws_iam_policy_document.bucket.json
  depends_on = [aws_s3_bucket_public_access_block.logs]
}

resource "aws_s3_bucket_lifecycle_configuration" "logs" {
  count = var.create_bucket ? 1 : 0
  # checkov:skip=CKV_AWS_300:The first rule aborts incomplete multipart uploads bucket-wide after 1 day; checkov loses static rules next to dynamic ones.
  bucket = aws_s3_bucket.logs[0].id

  rule {
    id     = "incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    # An upload the router could not abort (killed mid-object) is removed after a day.
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  dynamic "rule" {
    for_each = var.transition_days > 0 || var.expiration_days > 0 ? [1] : []
    content {
      id     = "logs"
      status = "Enabled"
      filter {
        prefix = var.logs_prefix
      }
      dynamic "transition" {
        for_each = var.transition_days > 0 ? [1] : []
        content {
          days          = var.transition_days
          storage_class = var.transition_storage_class
        }
      }
      dynamic "expiration" {
        for_each = var.expiration_days > 0 ? [1] : []
        content {
          days = var.expiration_days
        }
      }
    }
  }

  # The compactor's output: uploads of a killed run go after a day (also covered by the
  # bucket-wide rule; stated here for the prefix), Parquet expires with the logs.
  dynamic "rule" {
    for_each = local.compactor ? [1] : []
    content {
      id     = "compacted"
      status = "Enabled"
      filter {
        prefix = var.compact_prefix
      }
      abort_incomplete_multipart_upload {
        days_after_initiation = 1
      }
      dynamic "expiration" {
        for_each = var.expiration_days > 0 ? [1] : []
        content {
          days = var.expiration_days
        }
      }
    }
  }

  # Inputs the compactor tagged (compact_inputs = "tag") expire once compacted.
  dynamic "rule" {
    for_each = local.compactor && var.compact_inputs == "tag" && var.compacted_input_expiration_days > 0 ? [1] : []
    content {
      id     = "compacted-inputs"
      status = "Enabled"
      filter {
        and {
          prefix = var.logs_prefix
          tags   = { "logferry-compacted" = "true" }
        }
      }
      expiration {
        days = var.compacted_input_expiration_days
      }
    }
  }

  # Index documents go with the objects they describe.
  dynamic "rule" {
    for_each = var.expiration_days > 0 ? [1] : []
    content {
      id     = "index"
      status = "Enabled"
      filter {
        prefix = var.index_prefix
      }
      expiration {
        days = var.expiration_days
      }
    }
  }
}

# -- CloudWatch Logs -------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "routers" {
  # checkov:skip=CKV_AWS_158:KMS is optional (log_group_kms_key_arn); CloudWatch encrypts log data at rest either way.
  # checkov:skip=CKV_AWS_338:Retention is a variable (log_group_retention_days, default 30 days).
  count             = var.create_log_group ? 1 : 0
  name              = local.log_group_name
  retention_in_days = var.log_group_retention_days
  kms_key_id        = var.log_group_kms_key_arn == "" ? null : var.log_group_kms_key_arn
  tags              = var.tags
}

# -- Firehose --------------------------------------------------------------------------------

data "aws_iam_policy_document" "firehose_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["firehose.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "sts:ExternalId"
      values   = [local.account]
    }
  }
}

resource "aws_iam_role" "firehose" {
  count              = var.create_firehose ? 1 : 0
  name               = "${var.name_prefix}-firehose"
  assume_role_policy = data.aws_iam_policy_document.firehose_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "firehose" {
  statement {
    sid       = "Bucket"
    actions   = ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"]
    resources = [local.bucket_arn]
  }
  statement {
    sid     = "Objects"
    actions = ["s3:AbortMultipartUpload", "s3:GetObject", "s3:PutObject"]
    resources = [
      "${local.bucket_arn}/${regex("^[^!]*", var.firehose_prefix)}*",
      "${local.bucket_arn}/${regex("^[^!]*", var.firehose_error_prefix)}*",
    ]
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == "" ? [] : [1]
    content {
      sid       = "Kms"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = [var.kms_key_arn]
    }
  }
}

resource "aws_iam_role_policy" "firehose" {
  count  = var.create_firehose ? 1 : 0
  name   = "deliver-to-s3"
  role   = aws_iam_role.firehose[0].id
  policy = data.aws_iam_policy_document.firehose.json
}

resource "aws_kinesis_firehose_delivery_stream" "logs" {
  count       = var.create_firehose ? 1 : 0
  name        = "${var.name_prefix}-logs"
  destination = "extended_s3"

  server_side_encryption {
    enabled  = true
    key_type = "AWS_OWNED_CMK"
  }

  extended_s3_configuration {
    role_arn            = aws_iam_role.firehose[0].arn
    bucket_arn          = local.bucket_arn
    prefix              = var.firehose_prefix
    error_output_prefix = var.firehose_error_prefix
    buffering_size      = var.firehose_buffering_size
    buffering_interval  = var.firehose_buffering_interval
    compression_format  = var.firehose_compression
    kms_key_arn         = var.kms_key_arn == "" ? null : var.kms_key_arn
  }

  tags = var.tags
}

# -- the indexer: S3 -> SQS -> Lambda, with a dead-letter queue ------------------------------

resource "aws_sqs_queue" "indexer_dlq" {
  count                     = local.indexer ? 1 : 0
  name                      = "${local.indexer_name}-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
  tags                      = var.tags
}

resource "aws_sqs_queue" "indexer" {
  count                      = local.indexer ? 1 : 0
  name                       = local.indexer_name
  visibility_timeout_seconds = 6 * local.function_timeout
  message_retention_seconds  = 345600
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.indexer_dlq[0].arn
    maxReceiveCount     = var.indexer_max_receive_count
  })
  tags = var.tags
}

data "aws_iam_policy_document" "indexer_queue" {
  count = local.indexer ? 1 : 0
  statement {
    sid       = "S3Notifications"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.indexer[0].arn]
    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [local.bucket_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
  }
}

resource "aws_sqs_queue_policy" "indexer" {
  count     = local.indexer ? 1 : 0
  queue_url = aws_sqs_queue.indexer[0].id
  policy    = data.aws_iam_policy_document.indexer_queue[0].json
}

resource "aws_s3_bucket_notification" "logs" {
  count  = local.indexer ? 1 : 0
  bucket = local.bucket_id
  queue {
    queue_arn = aws_sqs_queue.indexer[0].arn
    events    = ["s3:ObjectCreated:*"]
    # Only the routers' objects: index documents and quarantined copies never re-trigger.
    filter_prefix = var.logs_prefix
  }
  depends_on = [aws_sqs_queue_policy.indexer]
}

resource "aws_cloudwatch_log_group" "indexer" {
  # checkov:skip=CKV_AWS_158:The function's own logs; KMS is left to the user (CloudWatch encrypts at rest).
  # checkov:skip=CKV_AWS_338:Retention is a variable (log_group_retention_days, default 30 days).
  count             = local.indexer ? 1 : 0
  name              = "/aws/lambda/${local.indexer_name}"
  retention_in_days = var.log_group_retention_days
  tags              = var.tags
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "indexer" {
  count              = local.indexer ? 1 : 0
  name               = local.indexer_name
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "indexer" {
  count = local.indexer ? 1 : 0
  statement {
    sid       = "ReadLogs"
    actions   = ["s3:GetObject"]
    resources = ["${local.bucket_arn}/${var.logs_prefix}*"]
  }
  statement {
    sid       = "WriteIndexAndQuarantine"
    actions   = ["s3:PutObject"]
    resources = ["${local.bucket_arn}/${var.index_prefix}*", "${local.bucket_arn}/${var.quarantine_prefix}*"]
  }
  statement {
    sid       = "Queue"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]
    resources = [aws_sqs_queue.indexer[0].arn]
  }
  statement {
    sid       = "OwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.indexer[0].arn}:*"]
  }
  # The compactor's calls (lambda/README.md), only when it is on.
  dynamic "statement" {
    for_each = local.compactor ? [1] : []
    content {
      sid       = "CompactList"
      actions   = ["s3:ListBucket"]
      resources = [local.bucket_arn]
      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values = concat(
          ["${var.compact_prefix}*", "${var.index_prefix}*", "${local.compact_quarantine}*"],
          [for p in local.compact_source_prefixes : "${p}*"],
        )
      }
    }
  }
  dynamic "statement" {
    for_each = local.compactor ? [1] : []
    content {
      sid       = "CompactRead"
      actions   = ["s3:GetObject"]
      resources = concat(["${local.bucket_arn}/${var.compact_prefix}*", "${local.bucket_arn}/${var.index_prefix}*"], [for p in local.compact_source_prefixes : "${local.bucket_arn}/${p}*"])
    }
  }
  dynamic "statement" {
    for_each = local.compactor ? [1] : []
    content {
      sid = "CompactWriteOwn"
      # PutObject covers the multipart calls that write a file; AbortMultipartUpload ends
      # the upload of a group that failed, or of a killed run, before it is retried.
      actions   = ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
      resources = ["${local.bucket_arn}/${var.compact_prefix}*", "${local.bucket_arn}/${local.compact_quarantine}*"]
    }
  }
  dynamic "statement" {
    for_each = local.compactor ? [1] : []
    content {
      # A re-run lists the uploads a killed run left under compact_prefix to abort them
      # (ListMultipartUploads takes no s3:prefix condition).
      sid       = "CompactListUploads"
      actions   = ["s3:ListBucketMultipartUploads"]
      resources = [local.bucket_arn]
    }
  }
  dynamic "statement" {
    for_each = local.compactor && var.compact_inputs == "tag" ? [1] : []
    content {
      sid       = "CompactTagInputs"
      actions   = ["s3:GetObjectTagging", "s3:PutObjectTagging"]
      resources = [for p in local.compact_source_prefixes : "${local.bucket_arn}/${p}*"]
    }
  }
  dynamic "statement" {
    for_each = local.compactor && var.compact_inputs == "delete" ? [1] : []
    content {
      sid       = "CompactDeleteInputs"
      actions   = ["s3:DeleteObject"]
      resources = [for p in local.compact_source_prefixes : "${local.bucket_arn}/${p}*"]
    }
  }
  dynamic "statement" {
    for_each = var.kms_key_arn == "" ? [] : [1]
    content {
      sid       = "Kms"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [var.kms_key_arn]
    }
  }
}

resource "aws_iam_role_policy" "indexer" {
  count  = local.indexer ? 1 : 0
  name   = "index-logs"
  role   = aws_iam_role.indexer[0].id
  policy = data.aws_iam_policy_document.indexer[0].json
}

resource "aws_lambda_function" "indexer" {
  # checkov:skip=CKV_AWS_50:X-Ray tracing would need extra permissions and adds cost per object; enable it if you use X-Ray.
  # checkov:skip=CKV_AWS_116:Invoked through an SQS event source mapping; failed messages go to the queue's dead-letter queue, not a function DLQ (which only serves async invokes).
  # checkov:skip=CKV_AWS_117:Talks only to S3, SQS and CloudWatch Logs over their public endpoints; no VPC resources to reach.
  # checkov:skip=CKV_AWS_173:The environment holds only prefixes and limits, no secrets; Lambda encrypts it at rest with an AWS key.
  # checkov:skip=CKV_AWS_272:Code signing needs a signing profile the user owns; the zip is built from this repository.
  count                          = local.indexer ? 1 : 0
  function_name                  = local.indexer_name
  role                           = aws_iam_role.indexer[0].arn
  filename                       = var.indexer_zip_path
  source_code_hash               = filebase64sha256(var.indexer_zip_path)
  runtime                        = "provided.al2023"
  handler                        = "bootstrap"
  architectures                  = ["x86_64"]
  memory_size                    = local.function_memory
  timeout                        = local.function_timeout
  reserved_concurrent_executions = var.indexer_reserved_concurrency

  environment {
    variables = merge(var.indexer_environment, {
      INDEX_PREFIX      = var.index_prefix
      QUARANTINE_PREFIX = var.quarantine_prefix
    }, local.compact_environment)
  }

  logging_config {
    log_format = "Text"
    log_group  = aws_cloudwatch_log_group.indexer[0].name
  }

  tags       = var.tags
  depends_on = [aws_iam_role_policy.indexer]
}

resource "aws_lambda_event_source_mapping" "indexer" {
  count                              = local.indexer ? 1 : 0
  event_source_arn                   = aws_sqs_queue.indexer[0].arn
  function_name                      = aws_lambda_function.indexer[0].arn
  batch_size                         = 10
  maximum_batching_window_in_seconds = 5
  # Only the messages the function names are retried; the rest of the batch is done.
  function_response_types = ["ReportBatchItemFailures"]
}

# -- the compactor: an hourly EventBridge schedule invoking the same function ---------------

resource "aws_cloudwatch_event_rule" "compactor" {
  count               = local.compactor ? 1 : 0
  name                = "${local.indexer_name}-compact"
  description         = "Compacts each closed hour of the log archive into Parquet (logferry)."
  schedule_expression = var.compact_schedule
  tags                = var.tags

  lifecycle {
    precondition {
      condition     = length(var.compact_sources) > 0
      error_message = "compactor_enabled needs compact_sources (source name -> key template, e.g. { app = \"logs/app/%Y/%m/%d/%H/\" })."
    }
    precondition {
      condition     = alltrue([for t in values(var.compact_sources) : startswith(t, var.logs_prefix)])
      error_message = "Every compact_sources template must lie under logs_prefix (the function reads only there)."
    }
    precondition {
      # Parquet under logs_prefix would notify the indexer; under the index or quarantine
      # prefix it would be read as index documents or overlap quarantined copies.
      condition = !anytrue([for p in [var.logs_prefix, var.index_prefix, var.quarantine_prefix] :
      startswith(var.compact_prefix, p) || startswith(p, var.compact_prefix)])
      error_message = "compact_prefix must not overlap logs_prefix, index_prefix or quarantine_prefix."
    }
  }
}

resource "aws_cloudwatch_event_target" "compactor" {
  count     = local.compactor ? 1 : 0
  rule      = aws_cloudwatch_event_rule.compactor[0].name
  target_id = "compactor"
  arn       = aws_lambda_function.indexer[0].arn
}

resource "aws_lambda_permission" "compactor" {
  count         = local.compactor ? 1 : 0
  statement_id  = "AllowCompactSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.indexer[0].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.compactor[0].arn
}
