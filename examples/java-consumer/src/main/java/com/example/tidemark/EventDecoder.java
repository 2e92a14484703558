package com.example.tidemark;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.stream.Stream;

import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.SchemaParser;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BadHeaderException;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.MissingSchemaException;
import org.apache.avro.message.SchemaStore;

/**
 * Decodes Tidemark events: Avro single-object encoding ({@code C3 01}, the 8-byte little-endian CRC-64-AVRO
 * fingerprint of the writer schema, the Avro binary body).
 *
 * <p>Every schema of {@code schemas/avro} (the current versions, used as reader schemas) and of
 * {@code schemas/released/v*} (earlier versions that may have written older messages) goes into one
 * {@link SchemaStore.Cache}. A message is read with the current version of its writer's record, so a message
 * written with a released version is resolved by Avro's rules (a field added since takes its default). A
 * fingerprint that no schema has is a {@link MissingSchemaException}: an error, never a guess.
 */
public final class EventDecoder {
    private static final int HEADER_SIZE = 10;

    private final SchemaStore.Cache store = new SchemaStore.Cache();
    private final Map<String, Schema> current = new HashMap<>();
    private final Map<String, BinaryMessageDecoder<GenericRecord>> decoders = new ConcurrentHashMap<>();
    private int fingerprints;

    /**
     * @param schemaDir Tidemark's {@code schemas} directory (with {@code avro/} and {@code released/v*}), or
     *     any directory of {@code .avsc} files
     */
    public EventDecoder(Path schemaDir) throws IOException {
        Path avro = schemaDir.resolve("avro");
        Path currentDir = Files.isDirectory(avro) ? avro : schemaDir;
        for (Schema schema : records(currentDir)) {
            current.put(schema.getFullName(), schema);
            store.addSchema(schema);
            fingerprints++;
        }
        Path released = schemaDir.resolve("released");
        if (Files.isDirectory(avro) && Files.isDirectory(released)) {
            try (Stream<Path> versions = Files.list(released)) {
                for (Path version : versions.filter(p -> p.getFileName().toString().startsWith("v")).sorted().toList()) {
                    for (Schema schema : records(version)) {
                        if (store.findByFingerprint(SchemaNormalization.parsingFingerprint64(schema)) == null) {
                            store.addSchema(schema);
                            fingerprints++;
                        }
                    }
                }
            }
        }
        if (current.isEmpty()) {
            throw new IOException("no record schema (.avsc) in " + currentDir.toAbsolutePath());
        }
    }

    /**
     * The record schemas of one directory, each the top-level schema of its file. A file may use named types
     * that another file of the directory defines (e.g. OrderSide): one SchemaParser reads them all, in any
     * order, and resolves such references once every file is parsed.
     */
    private static List<Schema> records(Path dir) throws IOException {
        SchemaParser parser = new SchemaParser();
        List<SchemaParser.ParseResult> parsed = new ArrayList<>();
        try (Stream<Path> files = Files.list(dir)) {
            for (Path file : files.filter(p -> p.toString().endsWith(".avsc")).sorted().toList()) {
                parsed.add(parser.parse(file));
            }
        }
        List<Schema> records = new ArrayList<>();
        for (SchemaParser.ParseResult result : parsed) {
            Schema schema = result.mainSchema(); // resolves references to types of other files
            if (schema.getType() == Schema.Type.RECORD) { // files of shared enums only provide named types
                records.add(schema);
            }
        }
        return records;
    }

    /** The current (reader) schemas by full name. */
    public Map<String, Schema> schemas() {
        return current;
    }

    /** How many distinct writer schemas (current and released) the decoder knows. */
    public int fingerprintCount() {
        return fingerprints;
    }

    /** The CRC-64-AVRO fingerprint as the 8 bytes of the message header, in hex (what {@code xxd} shows). */
    public static String fingerprintHex(long fingerprint) {
        byte[] bytes = ByteBuffer.allocate(8).order(ByteOrder.LITTLE_ENDIAN).putLong(fingerprint).array();
        StringBuilder hex = new StringBuilder();
        for (byte b : bytes) {
            hex.append(String.format("%02x", b));
        }
        return hex.toString();
    }

    /**
     * Decodes one message into a record of the current version of its schema.
     *
     * @throws BadHeaderException not a single-object message (or a tombstone)
     * @throws MissingSchemaException the fingerprint belongs to no known schema
     * @throws IOException a body that does not match its schema
     */
    public GenericRecord decode(byte[] message) throws IOException {
        if (message == null) {
            throw new BadHeaderException("no value (a tombstone)");
        }
        if (message.length < HEADER_SIZE || message[0] != (byte) 0xC3 || message[1] != (byte) 0x01) {
            throw new BadHeaderException("not an Avro single-object message (marker C3 01 and 8-byte fingerprint)");
        }
        long fingerprint = ByteBuffer.wrap(message, 2, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
        Schema writer = store.findByFingerprint(fingerprint);
        if (writer == null) {
            throw new MissingSchemaException("unknown schema fingerprint " + fingerprintHex(fingerprint));
        }
        BinaryMessageDecoder<GenericRecord> decoder = decoders.computeIfAbsent(writer.getFullName(),
            name -> new BinaryMessageDecoder<>(GenericData.get(), current.getOrDefault(name, writer), store));
        return decoder.decode(message);
    }
}
