# Athena over the archive with partition projection: partitions are computed from the table
# properties, so there is no crawler and no MSCK REPAIR, and months of hours cost nothing to
# list. Both tables read NDJSON with the OpenX JSON SerDe (gzip by file extension).

locals {
  glue_database = replace("${var.name_prefix}_logs", "-", "_")
  # yyyy/MM/dd/HH -> yyyy-MM-dd for the index table's day partition.
  glue_index_start = replace(substr(var.glue_projection_start, 0, 10), "/", "-")
  json_serde       = "org.openx.data.jsonserde.JsonSerDe"
  text_input       = "org.apache.hadoop.mapred.TextInputFormat"
  text_output      = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"
}

resource "aws_glue_catalog_database" "logs" {
  count = var.create_glue_tables ? 1 : 0
  name  = local.glue_database
}

# The routers' objects: <logs_prefix>{ecs_cluster}/%Y/%m/%d/%H/<id>-<uuidv7>.ndjson.gz
resource "aws_glue_catalog_table" "logs" {
  count         = var.create_glue_tables ? 1 : 0
  database_name = aws_glue_catalog_database.logs[0].name
  name          = "logs"
  table_type    = "EXTERNAL_TABLE"

  parameters = {
    classification                      = "json"
    EXTERNAL                            = "TRUE"
    "projection.enabled"                = "true"
    "projection.cluster.type"           = "enum"
    "projection.cluster.values"         = join(",", var.glue_cluster_names)
    "projection.datehour.type"          = "date"
    "projection.datehour.format"        = "yyyy/MM/dd/HH"
    "projection.datehour.range"         = "${var.glue_projection_start},NOW"
    "projection.datehour.interval"      = "1"
    "projection.datehour.interval.unit" = "HOURS"
    "storage.location.template"         = "s3://${local.bucket_id}/${var.logs_prefix}$${cluster}/$${datehour}/"
  }

  partition_keys {
    name = "cluster"
    type = "string"
  }
  partition_keys {
    name = "datehour"
    type = "string"
  }

  storage_descriptor {
    location      = "s3://${local.bucket_id}/${var.logs_prefix}"
    input_format  = local.text_input
    output_format = local.text_output

    ser_de_info {
      serialization_library = local.json_serde
      parameters = {
        "ignore.malformed.json" = "true"
        "mapping.timestamp"     = "@timestamp"
      }
    }

    dynamic "columns" {
      for_each = merge({
        timestamp           = "string"
        level               = "string"
        msg                 = "string"
        log                 = "string"
        ecs_cluster         = "string"
        ecs_task_arn        = "string"
        ecs_task_id         = "string"
        ecs_task_definition = "string"
        container_name      = "string"
        container_id        = "string"
        aws_region          = "string"
        availability_zone   = "string"
        launch_type         = "string"
        ec2_instance_id     = "string"
        ec2_instance_type   = "string"
        az                  = "string"
        private_ip          = "string"
        kubernetes          = "struct<pod_name:string,namespace_name:string,pod_id:string,host:string,pod_ip:string,container_name:string,labels:map<string,string>>"
        # The compactor's declared columns, as text: the JSON SerDe fails a whole query on
        # a value of another type, where the Parquet leaves such a value in `rest`.
        # `cluster` and `datehour` are this table's partitions.
      }, { for name, ty in var.compact_columns : name => "string" if !contains(["cluster", "datehour"], name) })
      content {
        name = columns.key
        type = columns.value
      }
    }
  }

  lifecycle {
    precondition {
      condition     = length(var.glue_cluster_names) > 0
      error_message = "create_glue_tables needs glue_cluster_names (the {ecs_cluster} values of the key prefix)."
    }
  }
}

# The indexer's documents: <index_prefix>dt=YYYY-MM-DD/hour=HH/<id>.json
resource "aws_glue_catalog_table" "index" {
  count         = var.create_glue_tables ? 1 : 0
  database_name = aws_glue_catalog_database.logs[0].name
  name          = "log_index"
  table_type    = "EXTERNAL_TABLE"

  parameters = {
    classification                = "json"
    EXTERNAL                      = "TRUE"
    "projection.enabled"          = "true"
    "projection.dt.type"          = "date"
    "projection.dt.format"        = "yyyy-MM-dd"
    "projection.dt.range"         = "${local.glue_index_start},NOW"
    "projection.dt.interval"      = "1"
    "projection.dt.interval.unit" = "DAYS"
    "projection.hour.type"        = "integer"
    "projection.hour.range"       = "0,23"
    "projection.hour.digits"      = "2"
    "storage.location.template"   = "s3://${local.bucket_id}/${var.index_prefix}dt=$${dt}/hour=$${hour}/"
  }

  partition_keys {
    name = "dt"
    type = "string"
  }
  partition_keys {
    name = "hour"
    type = "string"
  }

  storage_descriptor {
    location      = "s3://${local.bucket_id}/${var.index_prefix}"
    input_format  = local.text_input
    output_format = local.text_output

    ser_de_info {
      serialization_library = local.json_serde
      parameters = {
        "ignore.malformed.json" = "true"
      }
    }

    dynamic "columns" {
      for_each = {
        bucket             = "string"
        key                = "string"
        size               = "bigint"
        etag               = "string"
        records            = "bigint"
        uncompressed_bytes = "bigint"
        min_time           = "string"
        max_time           = "string"
        levels             = "map<string,bigint>"
        distinct           = "map<string,array<string>>"
      }
      content {
        name = columns.key
        type = columns.value
      }
    }
  }
}

# The compactor's Parquet: <compact_prefix>dt=YYYY-MM-DD/hour=HH/source=<name>/part-<id>.parquet
# (files named _manifest-*, _pending-*, _done-* are skipped by Athena). Closed hours; the
# NDJSON `logs` table keeps serving the open one.
locals {
  # The Parquet schema, in the file's column order (lambda/README.md, "Columns"): the fixed
  # columns, the declared ones in name order, then kubernetes and rest.
  parquet_columns = concat(local.parquet_leading_columns, [for name, ty in var.compact_columns : [name, ty]], local.parquet_trailing_columns)
  parquet_leading_columns = [
    ["timestamp", "timestamp"],
    ["level", "string"],
    ["log", "string"],
    ["message", "string"],
    ["msg", "string"],
    ["ecs_cluster", "string"],
    ["ecs_task_arn", "string"],
    ["ecs_task_id", "string"],
    ["ecs_task_definition", "string"],
    ["container_name", "string"],
    ["container_id", "string"],
    ["aws_region", "string"],
    ["availability_zone", "string"],
    ["launch_type", "string"],
    ["ec2_instance_id", "string"],
    ["ec2_instance_type", "string"],
    ["az", "string"],
    ["private_ip", "string"],
    ["ami_id", "string"],
    ["account_id", "string"],
    ["hostname", "string"],
  ]
  parquet_trailing_columns = [
    ["kubernetes", "struct<pod_name:string,namespace_name:string,pod_id:string,host:string,container_name:string,container_id:string,container_image:string,container_hash:string,docker_id:string,labels:map<string,string>,annotations:map<string,string>>"],
    ["rest", "string"],
  ]
  parquet_tables = var.create_glue_tables && local.compactor ? 1 : 0
  # The named queries' sample source; empty sources fail the rule's precondition instead.
  parquet_example_source = length(var.compact_sources) > 0 ? keys(var.compact_sources)[0] : "<source>"
}

resource "aws_glue_catalog_table" "logs_parquet" {
  count         = local.parquet_tables
  database_name = aws_glue_catalog_database.logs[0].name
  name          = "logs_parquet"
  table_type    = "EXTERNAL_TABLE"

  parameters = {
    classification                = "parquet"
    EXTERNAL                      = "TRUE"
    "parquet.compression"         = "ZSTD"
    "projection.enabled"          = "true"
    "projection.dt.type"          = "date"
    "projection.dt.format"        = "yyyy-MM-dd"
    "projection.dt.range"         = "${local.glue_index_start},NOW"
    "projection.dt.interval"      = "1"
    "projection.dt.interval.unit" = "DAYS"
    "projection.hour.type"        = "integer"
    "projection.hour.range"       = "0,23"
    "projection.hour.digits"      = "2"
    "projection.source.type"      = "enum"
    "projection.source.values"    = join(",", keys(var.compact_sources))
    "storage.location.template"   = "s3://${local.bucket_id}/${var.compact_prefix}dt=$${dt}/hour=$${hour}/source=$${source}/"
  }

  partition_keys {
    name = "dt"
    type = "string"
  }
  partition_keys {
    name = "hour"
    type = "string"
  }
  partition_keys {
    name = "source"
    type = "string"
  }

  storage_descriptor {
    location      = "s3://${local.bucket_id}/${var.compact_prefix}"
    input_format  = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
    output_format = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"

    ser_de_info {
      serialization_library = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
      parameters = {
        "serialization.format" = "1"
      }
    }

    dynamic "columns" {
      for_each = local.parquet_columns
      content {
        name = columns.value[0]
        type = columns.value[1]
      }
    }
  }
}

# Named queries over the Parquet table; each names its dt, hour and source partitions, so
# Athena reads one hour of one source.
resource "aws_athena_named_query" "errors_by_task" {
  count       = local.parquet_tables
  name        = "${var.name_prefix}-errors-by-task"
  description = "Errors per ECS task in one hour of one source (logs_parquet)."
  workgroup   = var.athena_workgroup
  database    = aws_glue_catalog_database.logs[0].name
  query       = <<-SQL
    SELECT ecs_task_id, container_name, count(*) AS errors,
           min("timestamp") AS first_seen, max("timestamp") AS last_seen
    FROM logs_parquet
    WHERE dt = '2026-12-03' AND hour = '14' AND source = '${local.parquet_example_source}'
      AND level = 'error'
    GROUP BY ecs_task_id, container_name
    ORDER BY errors DESC
    LIMIT 100;
  SQL
}

resource "aws_athena_named_query" "by_label" {
  count       = local.parquet_tables
  name        = "${var.name_prefix}-by-label"
  description = "Records of the pods with a Kubernetes label, in one hour of one source (logs_parquet)."
  workgroup   = var.athena_workgroup
  database    = aws_glue_catalog_database.logs[0].name
  query       = <<-SQL
    SELECT "timestamp", kubernetes.namespace_name, kubernetes.pod_name, level, coalesce(message, msg, log) AS text
    FROM logs_parquet
    WHERE dt = '2026-12-03' AND hour = '14' AND source = '${local.parquet_example_source}'
      AND kubernetes.labels['app'] = 'checkout'
    ORDER BY "timestamp"
    LIMIT 100;
  SQL
}
