package com.example.tidemark;

import java.io.IOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

import org.apache.avro.AvroRuntimeException;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.errors.WakeupException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.StringDeserializer;

/**
 * Reads Tidemark's pattern signals and alerts and prints one line per event:
 * {@code TOPIC p=PARTITION o=OFFSET SCHEMA {the record as JSON}}.
 *
 * <p>A message that cannot be decoded is reported on stderr and skipped; the consumer goes on.
 */
public final class TidemarkConsumer {
    private static final String USAGE = """
        usage: java -jar tidemark-consumer.jar --schemas DIR [--bootstrap HOST:PORT] [--prefix PREFIX]
                 [--group ID] [--topics signals.patterns,alerts] [--max-events N] [--timeout-s S]
          --schemas     Tidemark's schemas/ directory (avro/ and released/v*), or a directory of .avsc files
          --bootstrap   Kafka bootstrap servers (default 127.0.0.1:19092)
          --prefix      topic prefix, e.g. demo. for the demo's topics (default none)
          --group       consumer group id (default tidemark-java-example)
          --topics      topics without the prefix, comma separated (default signals.patterns,alerts)
          --max-events  exit 0 after printing N events (default: run until stopped)
          --timeout-s   with --max-events: exit 1 if N events were not printed within S seconds""";

    private TidemarkConsumer() {
    }

    public static void main(String[] argv) throws Exception {
        Map<String, String> args = parse(argv);
        String bootstrap = args.getOrDefault("bootstrap", "127.0.0.1:19092");
        String prefix = args.getOrDefault("prefix", "");
        String group = args.getOrDefault("group", "tidemark-java-example");
        List<String> topics = List.of(args.getOrDefault("topics", "signals.patterns,alerts").split(",")).stream()
            .map(topic -> prefix + topic.strip())
            .toList();
        long maxEvents = Long.parseLong(args.getOrDefault("max-events", "0"));
        double timeoutS = Double.parseDouble(args.getOrDefault("timeout-s", "0"));
        if (!args.containsKey("schemas")) {
            usage("--schemas DIR is required");
        }

        EventDecoder decoder = new EventDecoder(Path.of(args.get("schemas")));
        System.err.printf("%d schemas (%d writer versions) from %s; reading %s at %s as group %s%n",
            decoder.schemas().size(), decoder.fingerprintCount(), args.get("schemas"), String.join(", ", topics),
            bootstrap, group);

        Properties config = new Properties();
        config.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        config.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        // The analytics runner writes these topics in transactions: never show what it aborted.
        config.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        config.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        config.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false"); // committed below, after printing
        config.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        config.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());

        KafkaConsumer<String, byte[]> consumer = new KafkaConsumer<>(config);
        CountDownLatch closed = new CountDownLatch(1);
        Thread shutdownHook = new Thread(() -> { // SIGTERM, Ctrl-C: leave poll(), commit, close
            consumer.wakeup();
            try {
                closed.await(10, TimeUnit.SECONDS);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        });
        Runtime.getRuntime().addShutdownHook(shutdownHook);

        int status = 0;
        long printed = 0;
        long deadline = timeoutS > 0 ? System.nanoTime() + (long) (timeoutS * 1e9) : Long.MAX_VALUE;
        Map<TopicPartition, OffsetAndMetadata> done = new HashMap<>();
        try {
            consumer.subscribe(topics);
            while (maxEvents == 0 || printed < maxEvents) {
                if (System.nanoTime() > deadline) {
                    System.err.printf("timed out after %ss: printed %d of %d events%n", args.get("timeout-s"),
                        printed, maxEvents);
                    status = 1;
                    break;
                }
                ConsumerRecords<String, byte[]> records = consumer.poll(Duration.ofMillis(500));
                for (ConsumerRecord<String, byte[]> record : records) {
                    String where = String.format("%s p=%d o=%d", record.topic(), record.partition(), record.offset());
                    try {
                        GenericRecord event = decoder.decode(record.value());
                        System.out.println(where + " " + event.getSchema().getFullName() + " " + event);
                        printed++;
                    } catch (IOException | AvroRuntimeException e) { // MissingSchemaException, BadHeaderException
                        System.err.printf("%s skipped (key %s): %s: %s%n", where, record.key(),
                            e.getClass().getSimpleName(), e.getMessage());
                    }
                    done.put(new TopicPartition(record.topic(), record.partition()),
                        new OffsetAndMetadata(record.offset() + 1));
                    if (maxEvents > 0 && printed >= maxEvents) {
                        break;
                    }
                }
                System.out.flush();
                if (!done.isEmpty()) {
                    consumer.commitSync(done);
                    done.clear();
                }
            }
        } catch (WakeupException e) {
            System.err.printf("stopping: printed %d events%n", printed);
        } finally {
            try {
                if (!done.isEmpty()) {
                    consumer.commitSync(done);
                }
            } catch (RuntimeException e) {
                System.err.println("could not commit offsets on the way out: " + e);
            }
            consumer.close(Duration.ofSeconds(5));
            closed.countDown();
        }
        try {
            Runtime.getRuntime().removeShutdownHook(shutdownHook);
        } catch (IllegalStateException e) {
            return; // already shutting down (a signal): the JVM sets the exit status
        }
        System.exit(status);
    }

    private static Map<String, String> parse(String[] argv) {
        Map<String, String> args = new HashMap<>();
        for (int i = 0; i < argv.length; i++) {
            if (argv[i].equals("-h") || argv[i].equals("--help")) {
                System.out.println(USAGE);
                System.exit(0);
            }
            if (!argv[i].startsWith("--") || i + 1 == argv.length) {
                usage("unexpected argument " + argv[i]);
            }
            String name = argv[i].substring(2);
            if (!List.of("bootstrap", "prefix", "schemas", "group", "topics", "max-events", "timeout-s")
                .contains(name)) {
                usage("unknown option " + argv[i]);
            }
            args.put(name, argv[++i]);
        }
        return args;
    }

    private static void usage(String problem) {
        System.err.println(problem);
        System.err.println(USAGE);
        System.exit(2);
    }
}
